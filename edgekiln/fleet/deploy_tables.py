"""The deployment tables: uploaded packages, plans, their stages, the devices each started
stage holds, and the latest result each device reported per deployment.

They join the fleet's other tables in one SQLAlchemy ``MetaData`` (``define`` is called from
:func:`edgekiln.fleet.database.define_tables`), so ``create_schema`` makes them on SQLite and
PostgreSQL alike and their foreign keys reach ``devices``.
"""

from __future__ import annotations

from typing import Any

PACKAGES = "deploy_packages"
PLANS = "deploy_plans"
STAGES = "deploy_stages"
STAGE_DEVICES = "deploy_stage_devices"
RESULTS = "deploy_results"


def define(sa: Any, md: Any) -> None:
    """Add the deployment tables to ``md``."""
    sa.Table(
        PACKAGES,
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("handle", sa.String(63), nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("profile", sa.String(128), nullable=False),
        sa.Column("backend", sa.String(64), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.Float),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("object_key", sa.String(512), nullable=False),
        sa.Column("uploaded_at", sa.Float, nullable=False),
        sa.UniqueConstraint("handle", "version", name="uq_package_version"),
    )
    sa.Table(
        PLANS,
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(63), nullable=False, unique=True),
        sa.Column("fleet", sa.String(63), nullable=False),
        sa.Column("package_id", sa.Integer, sa.ForeignKey(f"{PACKAGES}.id"), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("last_modified_at", sa.Float, nullable=False),
        # Set once, when a stage under ROLLBACK_ON_FAILURE sees its first failure: from then
        # on no stage starts and no device that has not fetched the package gets it.
        sa.Column("halted_at", sa.Float),
        sa.Column("halted_reason", sa.String(512)),
    )
    sa.Table(
        STAGES,
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("plan_id", sa.Integer, sa.ForeignKey(f"{PLANS}.id", ondelete="CASCADE"), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("subset_type", sa.String(16), nullable=False),
        sa.Column("percentage", sa.Integer),
        sa.Column("device_names", sa.Text, nullable=False, default="[]"),
        sa.Column("name_contains", sa.String(63)),
        sa.Column("failure_handling", sa.String(32), nullable=False),
        sa.Column("latency_budget_ms", sa.Float),
        sa.Column("started_at", sa.Float),
        sa.Column("stopped_at", sa.Float),
        sa.UniqueConstraint("plan_id", "name", name="uq_stage_name"),
        sa.UniqueConstraint("plan_id", "position", name="uq_stage_position"),
    )
    sa.Table(
        STAGE_DEVICES,
        md,
        sa.Column("stage_id", sa.Integer, sa.ForeignKey(f"{STAGES}.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("device_id", sa.Integer, sa.ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True),
        # One stage per device and plan: a later stage never picks a device again.
        sa.Column("plan_id", sa.Integer, sa.ForeignKey(f"{PLANS}.id", ondelete="CASCADE"), nullable=False),
        sa.Column("assigned_at", sa.Float, nullable=False),
        # When the device was first handed the deployment (GET /v1/agent/deployments).
        sa.Column("delivered_at", sa.Float),
        sa.UniqueConstraint("plan_id", "device_id", name="uq_plan_device"),
    )
    sa.Table(
        RESULTS,
        md,
        sa.Column("device_id", sa.Integer, sa.ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("deployment_id", sa.String(256), primary_key=True),
        sa.Column("model_handle", sa.String(63), nullable=False),
        sa.Column("model_version", sa.BigInteger, nullable=False),
        sa.Column("desired_state", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("reason", sa.String(512), nullable=False, default=""),
        sa.Column("rollback_failure_reason", sa.String(512)),
        sa.Column("rollback_seconds", sa.Float),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("received_at", sa.Float, nullable=False),
    )
