"""Database: tables, engine, the private PostGIS cluster and migrations."""
