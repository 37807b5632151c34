"""The one base class every scenario model shares."""

from pydantic import BaseModel, ConfigDict


class Frozen(BaseModel):
    """Immutable, and unknown fields are an error (a typo must not silently do nothing)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
