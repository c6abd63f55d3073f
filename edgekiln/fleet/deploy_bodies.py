"""The deployment API's JSON bodies: Edge Manager's CreateEdgeDeploymentPlan, snake_case.

Names follow the fleet's one name rule (the pattern Edge Manager gives plan, stage and
device names), every list and string has a bound, and a stage's device selection must
carry exactly the field its subset type needs.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgekiln.fleet.bodies import Name

SUBSET_TYPES = ("PERCENTAGE", "SELECTION", "NAMECONTAINS")
FAILURE_POLICIES = ("ROLLBACK_ON_FAILURE", "DO_NOTHING")
MAX_STAGES = 10
MAX_SELECTED_DEVICES = 1000
# A p50 budget between 1 µs and an hour.
LatencyBudget = Annotated[float, Field(gt=0, le=3_600_000, allow_inf_nan=False)]


class DeviceSelection(BaseModel):
    """Edge Manager's DeviceSelectionConfig."""

    model_config = ConfigDict(extra="forbid")

    device_subset_type: Literal["PERCENTAGE", "SELECTION", "NAMECONTAINS"]
    percentage: Annotated[int, Field(ge=1, le=100)] | None = None
    device_names: list[Name] | None = Field(default=None, min_length=1, max_length=MAX_SELECTED_DEVICES)
    device_name_contains: Name | None = None

    @model_validator(mode="after")
    def _one_field_per_type(self) -> DeviceSelection:
        wanted = {
            "PERCENTAGE": "percentage",
            "SELECTION": "device_names",
            "NAMECONTAINS": "device_name_contains",
        }[self.device_subset_type]
        given = [f for f in ("percentage", "device_names", "device_name_contains") if getattr(self, f) is not None]
        if given != [wanted]:
            raise ValueError(f"{self.device_subset_type} takes {wanted} and nothing else (given: {given or 'none'})")
        return self


class DeploymentConfig(BaseModel):
    """Edge Manager's EdgeDeploymentConfig, plus the p50 latency budget of the health check."""

    model_config = ConfigDict(extra="forbid")

    failure_handling_policy: Literal["ROLLBACK_ON_FAILURE", "DO_NOTHING"] = "ROLLBACK_ON_FAILURE"
    latency_budget_ms: LatencyBudget | None = None


class StageBody(BaseModel):
    """Edge Manager's DeploymentStage."""

    model_config = ConfigDict(extra="forbid")

    stage_name: Name
    device_selection_config: DeviceSelection
    deployment_config: DeploymentConfig = Field(default_factory=DeploymentConfig)


class PlanBody(BaseModel):
    """CreateEdgeDeploymentPlan: one model (handle + uploaded package version), one device
    fleet, ordered stages."""

    model_config = ConfigDict(extra="forbid")

    edge_deployment_plan_name: Name
    device_fleet_name: Name
    model_handle: Name
    model_version: Annotated[int, Field(ge=1, le=2**53)]
    stages: list[StageBody] = Field(min_length=1, max_length=MAX_STAGES)

    @model_validator(mode="after")
    def _unique_stage_names(self) -> PlanBody:
        names = [s.stage_name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError("stage names must be unique within a plan")
        return self
