"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from geoalchemy2 import Geometry
from sqlalchemy.dialects import postgresql

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS postgis")
    op.create_table('api_tokens',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('scopes', sa.ARRAY(sa.Text()), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_tokens')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_api_tokens_token_hash'))
    )
    op.create_table('models',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('version', sa.String(length=128), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('metadata', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_models')),
    sa.UniqueConstraint('kind', 'version', name='uq_models_kind_version')
    )
    op.create_geospatial_table('areas',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('footprint', Geometry(geometry_type='MULTIPOLYGON', srid=4326, dimension=2, spatial_index=False, from_text='ST_GeomFromEWKT', name='geometry', nullable=False), nullable=False),
    sa.Column('utm_epsg', sa.Integer(), nullable=False),
    sa.Column('cadence', sa.Interval(), nullable=False),
    sa.Column('providers', sa.ARRAY(sa.Text()), nullable=False),
    sa.Column('sources', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('max_cloud', sa.Float(), nullable=False),
    sa.Column('resolution_m', sa.Float(), nullable=True),
    sa.Column('active', sa.Boolean(), server_default=sa.text('true'), nullable=False),
    sa.Column('segmenter_model_id', sa.Integer(), nullable=True),
    sa.Column('classifier_model_id', sa.Integer(), nullable=True),
    sa.Column('change_model_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['change_model_id'], ['models.id'], name=op.f('fk_areas_change_model_id_models'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['classifier_model_id'], ['models.id'], name=op.f('fk_areas_classifier_model_id_models'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['segmenter_model_id'], ['models.id'], name=op.f('fk_areas_segmenter_model_id_models'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_areas')),
    sa.UniqueConstraint('name', name=op.f('uq_areas_name'))
    )
    op.create_geospatial_index('idx_areas_footprint', 'areas', ['footprint'], unique=False, postgresql_using='gist', postgresql_ops={})
    op.create_geospatial_table('parcels',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('area_id', sa.Integer(), nullable=False),
    sa.Column('external_id', sa.Text(), nullable=False),
    sa.Column('geom', Geometry(geometry_type='MULTIPOLYGON', srid=4326, dimension=2, spatial_index=False, from_text='ST_GeomFromEWKT', name='geometry', nullable=False), nullable=False),
    sa.Column('area_m2', sa.Float(), nullable=False),
    sa.Column('attributes', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['area_id'], ['areas.id'], name=op.f('fk_parcels_area_id_areas'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_parcels')),
    sa.UniqueConstraint('area_id', 'external_id', name='uq_parcels_area_external')
    )
    op.create_geospatial_index('idx_parcels_geom', 'parcels', ['geom'], unique=False, postgresql_using='gist', postgresql_ops={})
    op.create_index(op.f('ix_parcels_area_id'), 'parcels', ['area_id'], unique=False)
    op.create_geospatial_table('scenes',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('area_id', sa.Integer(), nullable=False),
    sa.Column('provider', sa.String(length=64), nullable=False),
    sa.Column('product_id', sa.Text(), nullable=False),
    sa.Column('acquired_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('cloud_cover', sa.Float(), nullable=True),
    sa.Column('footprint', Geometry(geometry_type='MULTIPOLYGON', srid=4326, dimension=2, spatial_index=False, from_text='ST_GeomFromEWKT', name='geometry'), nullable=True),
    sa.Column('clear_geom', Geometry(geometry_type='MULTIPOLYGON', srid=4326, dimension=2, spatial_index=False, from_text='ST_GeomFromEWKT', name='geometry'), nullable=True),
    sa.Column('remote', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('file_path', sa.Text(), nullable=True),
    sa.Column('checksum', sa.Text(), nullable=True),
    sa.Column('size_bytes', sa.BigInteger(), nullable=True),
    sa.Column('status', sa.String(length=32), server_default=sa.text("'found'"), nullable=False),
    sa.Column('status_reason', sa.Text(), nullable=True),
    sa.Column('attempts', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['area_id'], ['areas.id'], name=op.f('fk_scenes_area_id_areas'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_scenes')),
    sa.UniqueConstraint('area_id', 'provider', 'product_id', name='uq_scenes_area_provider_product')
    )
    op.create_geospatial_index('idx_scenes_clear_geom', 'scenes', ['clear_geom'], unique=False, postgresql_using='gist', postgresql_ops={})
    op.create_geospatial_index('idx_scenes_footprint', 'scenes', ['footprint'], unique=False, postgresql_using='gist', postgresql_ops={})
    op.create_index('ix_scenes_area_acquired', 'scenes', ['area_id', 'acquired_at'], unique=False)
    op.create_index(op.f('ix_scenes_status'), 'scenes', ['status'], unique=False)
    op.create_table('subscriptions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('area_id', sa.Integer(), nullable=True),
    sa.Column('url', sa.Text(), nullable=False),
    sa.Column('secret', sa.Text(), nullable=False),
    sa.Column('min_confidence', sa.String(length=16), server_default=sa.text("'probable'"), nullable=False),
    sa.Column('filters', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('active', sa.Boolean(), server_default=sa.text('true'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['area_id'], ['areas.id'], name=op.f('fk_subscriptions_area_id_areas'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_subscriptions'))
    )
    op.create_index(op.f('ix_subscriptions_area_id'), 'subscriptions', ['area_id'], unique=False)
    op.create_geospatial_table('alerts',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('area_id', sa.Integer(), nullable=False),
    sa.Column('parcel_id', sa.BigInteger(), nullable=False),
    sa.Column('geom', Geometry(geometry_type='MULTIPOLYGON', srid=4326, dimension=2, spatial_index=False, from_text='ST_GeomFromEWKT', name='geometry', nullable=False), nullable=False),
    sa.Column('first_seen', sa.Date(), nullable=False),
    sa.Column('last_seen', sa.Date(), nullable=False),
    sa.Column('new_area_m2', sa.Float(), nullable=False),
    sa.Column('fraction', sa.Float(), nullable=False),
    sa.Column('confidence', sa.String(length=16), server_default=sa.text("'probable'"), nullable=False),
    sa.Column('status', sa.String(length=16), server_default=sa.text("'new'"), nullable=False),
    sa.Column('note', sa.Text(), nullable=True),
    sa.Column('reviewed_by', sa.Text(), nullable=True),
    sa.Column('reviewed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('source', sa.String(length=16), server_default=sa.text("'diff'"), nullable=False),
    sa.Column('model_version', sa.Text(), nullable=True),
    sa.Column('evidence', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['area_id'], ['areas.id'], name=op.f('fk_alerts_area_id_areas'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['parcel_id'], ['parcels.id'], name=op.f('fk_alerts_parcel_id_parcels'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_alerts'))
    )
    op.create_geospatial_index('idx_alerts_geom', 'alerts', ['geom'], unique=False, postgresql_using='gist', postgresql_ops={})
    op.create_index('ix_alerts_area_status', 'alerts', ['area_id', 'status'], unique=False)
    op.create_index('uq_alerts_open_parcel', 'alerts', ['parcel_id'], unique=True, postgresql_where=sa.text("status IN ('new', 'acknowledged', 'confirmed')"))
    op.create_geospatial_table('changes',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('area_id', sa.Integer(), nullable=False),
    sa.Column('scene_id', sa.BigInteger(), nullable=True),
    sa.Column('observed_on', sa.Date(), nullable=False),
    sa.Column('previous_on', sa.Date(), nullable=True),
    sa.Column('geom', Geometry(geometry_type='MULTIPOLYGON', srid=4326, dimension=2, spatial_index=False, from_text='ST_GeomFromEWKT', name='geometry', nullable=False), nullable=False),
    sa.Column('area_m2', sa.Float(), nullable=False),
    sa.Column('source', sa.String(length=16), server_default=sa.text("'diff'"), nullable=False),
    sa.Column('model_version', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['area_id'], ['areas.id'], name=op.f('fk_changes_area_id_areas'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['scene_id'], ['scenes.id'], name=op.f('fk_changes_scene_id_scenes'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_changes'))
    )
    op.create_geospatial_index('idx_changes_geom', 'changes', ['geom'], unique=False, postgresql_using='gist', postgresql_ops={})
    op.create_index('ix_changes_area_date', 'changes', ['area_id', 'observed_on'], unique=False)
    op.create_index(op.f('ix_changes_scene_id'), 'changes', ['scene_id'], unique=False)
    op.create_geospatial_table('detections',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('area_id', sa.Integer(), nullable=False),
    sa.Column('scene_id', sa.BigInteger(), nullable=True),
    sa.Column('observed_on', sa.Date(), nullable=False),
    sa.Column('kind', sa.String(length=16), server_default=sa.text("'built'"), nullable=False),
    sa.Column('geom', Geometry(geometry_type='MULTIPOLYGON', srid=4326, dimension=2, spatial_index=False, from_text='ST_GeomFromEWKT', name='geometry', nullable=False), nullable=False),
    sa.Column('area_m2', sa.Float(), nullable=False),
    sa.Column('mean_prob', sa.Float(), nullable=True),
    sa.Column('model_version', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['area_id'], ['areas.id'], name=op.f('fk_detections_area_id_areas'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['scene_id'], ['scenes.id'], name=op.f('fk_detections_scene_id_scenes'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_detections'))
    )
    op.create_geospatial_index('idx_detections_geom', 'detections', ['geom'], unique=False, postgresql_using='gist', postgresql_ops={})
    op.create_index('ix_detections_area_date', 'detections', ['area_id', 'observed_on'], unique=False)
    op.create_index(op.f('ix_detections_scene_id'), 'detections', ['scene_id'], unique=False)
    op.create_table('indicators',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('area_id', sa.Integer(), nullable=False),
    sa.Column('scene_id', sa.BigInteger(), nullable=True),
    sa.Column('observed_on', sa.Date(), nullable=False),
    sa.Column('built_km2', sa.Float(), nullable=True),
    sa.Column('settlement_km2', sa.Float(), nullable=True),
    sa.Column('clear_fraction', sa.Float(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['area_id'], ['areas.id'], name=op.f('fk_indicators_area_id_areas'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['scene_id'], ['scenes.id'], name=op.f('fk_indicators_scene_id_scenes'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_indicators')),
    sa.UniqueConstraint('area_id', 'observed_on', name='uq_indicators_area_date')
    )
    op.create_table('permits',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('parcel_id', sa.BigInteger(), nullable=False),
    sa.Column('permit_number', sa.Text(), nullable=False),
    sa.Column('kind', sa.Text(), nullable=True),
    sa.Column('valid_from', sa.Date(), nullable=False),
    sa.Column('valid_to', sa.Date(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['parcel_id'], ['parcels.id'], name=op.f('fk_permits_parcel_id_parcels'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_permits')),
    sa.UniqueConstraint('parcel_id', 'permit_number', name='uq_permits_parcel_number')
    )
    op.create_index(op.f('ix_permits_parcel_id'), 'permits', ['parcel_id'], unique=False)
    op.create_table('runs',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('area_id', sa.Integer(), nullable=False),
    sa.Column('scene_id', sa.BigInteger(), nullable=True),
    sa.Column('status', sa.String(length=32), server_default=sa.text("'running'"), nullable=False),
    sa.Column('steps', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('model_versions', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['area_id'], ['areas.id'], name=op.f('fk_runs_area_id_areas'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['scene_id'], ['scenes.id'], name=op.f('fk_runs_scene_id_scenes'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_runs'))
    )
    op.create_index(op.f('ix_runs_area_id'), 'runs', ['area_id'], unique=False)
    op.create_index(op.f('ix_runs_scene_id'), 'runs', ['scene_id'], unique=False)
    op.create_table('deliveries',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('delivery_id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('subscription_id', sa.Integer(), nullable=False),
    sa.Column('alert_id', sa.BigInteger(), nullable=False),
    sa.Column('event', sa.String(length=32), nullable=False),
    sa.Column('payload', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('status', sa.String(length=16), server_default=sa.text("'pending'"), nullable=False),
    sa.Column('attempts', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'[]'::jsonb"), nullable=False),
    sa.Column('attempt_count', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['alert_id'], ['alerts.id'], name=op.f('fk_deliveries_alert_id_alerts'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['subscription_id'], ['subscriptions.id'], name=op.f('fk_deliveries_subscription_id_subscriptions'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_deliveries')),
    sa.UniqueConstraint('delivery_id', name=op.f('uq_deliveries_delivery_id'))
    )
    op.create_index(op.f('ix_deliveries_alert_id'), 'deliveries', ['alert_id'], unique=False)
    op.create_index('ix_deliveries_pending', 'deliveries', ['status', 'next_attempt_at'], unique=False)
    op.create_index(op.f('ix_deliveries_subscription_id'), 'deliveries', ['subscription_id'], unique=False)
    op.create_table('parcel_changes',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('change_id', sa.BigInteger(), nullable=False),
    sa.Column('parcel_id', sa.BigInteger(), nullable=False),
    sa.Column('observed_on', sa.Date(), nullable=False),
    sa.Column('area_m2', sa.Float(), nullable=False),
    sa.Column('fraction', sa.Float(), nullable=False),
    sa.Column('permit_id', sa.BigInteger(), nullable=True),
    sa.Column('alert_id', sa.BigInteger(), nullable=True),
    sa.Column('verdict', sa.String(length=16), nullable=False),
    sa.ForeignKeyConstraint(['alert_id'], ['alerts.id'], name=op.f('fk_parcel_changes_alert_id_alerts'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['change_id'], ['changes.id'], name=op.f('fk_parcel_changes_change_id_changes'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['parcel_id'], ['parcels.id'], name=op.f('fk_parcel_changes_parcel_id_parcels'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['permit_id'], ['permits.id'], name=op.f('fk_parcel_changes_permit_id_permits'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_parcel_changes')),
    sa.UniqueConstraint('change_id', 'parcel_id', name='uq_parcel_changes_change_parcel')
    )
    op.create_index(op.f('ix_parcel_changes_parcel_id'), 'parcel_changes', ['parcel_id'], unique=False)


def downgrade() -> None:
    # The scheduler's job store lives in the same database (created by APScheduler itself).
    op.execute("DROP TABLE IF EXISTS apscheduler_jobs")
    op.drop_index(op.f('ix_parcel_changes_parcel_id'), table_name='parcel_changes')
    op.drop_table('parcel_changes')
    op.drop_index(op.f('ix_deliveries_subscription_id'), table_name='deliveries')
    op.drop_index('ix_deliveries_pending', table_name='deliveries')
    op.drop_index(op.f('ix_deliveries_alert_id'), table_name='deliveries')
    op.drop_table('deliveries')
    op.drop_index(op.f('ix_runs_scene_id'), table_name='runs')
    op.drop_index(op.f('ix_runs_area_id'), table_name='runs')
    op.drop_table('runs')
    op.drop_index(op.f('ix_permits_parcel_id'), table_name='permits')
    op.drop_table('permits')
    op.drop_table('indicators')
    op.drop_index(op.f('ix_detections_scene_id'), table_name='detections')
    op.drop_index('ix_detections_area_date', table_name='detections')
    op.drop_geospatial_index('idx_detections_geom', table_name='detections', postgresql_using='gist', column_name='geom')
    op.drop_geospatial_table('detections')
    op.drop_index(op.f('ix_changes_scene_id'), table_name='changes')
    op.drop_index('ix_changes_area_date', table_name='changes')
    op.drop_geospatial_index('idx_changes_geom', table_name='changes', postgresql_using='gist', column_name='geom')
    op.drop_geospatial_table('changes')
    op.drop_index('uq_alerts_open_parcel', table_name='alerts', postgresql_where=sa.text("status IN ('new', 'acknowledged', 'confirmed')"))
    op.drop_index('ix_alerts_area_status', table_name='alerts')
    op.drop_geospatial_index('idx_alerts_geom', table_name='alerts', postgresql_using='gist', column_name='geom')
    op.drop_geospatial_table('alerts')
    op.drop_index(op.f('ix_subscriptions_area_id'), table_name='subscriptions')
    op.drop_table('subscriptions')
    op.drop_index(op.f('ix_scenes_status'), table_name='scenes')
    op.drop_index('ix_scenes_area_acquired', table_name='scenes')
    op.drop_geospatial_index('idx_scenes_footprint', table_name='scenes', postgresql_using='gist', column_name='footprint')
    op.drop_geospatial_index('idx_scenes_clear_geom', table_name='scenes', postgresql_using='gist', column_name='clear_geom')
    op.drop_geospatial_table('scenes')
    op.drop_index(op.f('ix_parcels_area_id'), table_name='parcels')
    op.drop_geospatial_index('idx_parcels_geom', table_name='parcels', postgresql_using='gist', column_name='geom')
    op.drop_geospatial_table('parcels')
    op.drop_geospatial_index('idx_areas_footprint', table_name='areas', postgresql_using='gist', column_name='footprint')
    op.drop_geospatial_table('areas')
    op.drop_table('models')
    op.drop_table('api_tokens')
