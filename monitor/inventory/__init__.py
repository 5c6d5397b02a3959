"""Import and validate what users tell the monitor to watch: areas, parcels, permits."""
