"""Operations: long work (launch, stop, image build) that clients wait on or follow."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class OpStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass
class Progress:
    at: float
    message: str
    # Fraction done in [0, 1] where the work knows it (downloads); None otherwise.
    fraction: float | None = None


@dataclass
class Operation:
    id: str
    kind: str  # launch, start, stop, restart, image-build
    target: str  # the instance id or image name it works on
    status: OpStatus
    created_at: float
    progress: list[Progress] = field(default_factory=list)
    finished_at: float | None = None
    error: dict[str, str] | None = None  # {"code", "message"} when failed
    result: dict[str, object] | None = None
    project_id: str | None = None
    owner: str | None = None  # the control plane (host name) running it

    @property
    def done(self) -> bool:
        return self.status != OpStatus.RUNNING

    def to_dict(self, *, progress_after: int = 0) -> dict[str, object]:
        return {
            "id": self.id,
            "kind": self.kind,
            "target": self.target,
            "status": self.status.value,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
            "progress_count": len(self.progress),
            "progress": [
                {"index": i, "at": p.at, "message": p.message, "fraction": p.fraction}
                for i, p in enumerate(self.progress)
                if i >= progress_after
            ],
            "error": self.error,
            "result": self.result,
        }
