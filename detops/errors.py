"""Every error a detops user can meet.

The tree, drawn once::

    DetopsError
    ├── WorkspaceError
    │   └── WorkspaceNotFound           no detops.yaml from here upwards
    ├── ConfigError                      detops.yaml or DETOPS_* value is invalid
    ├── StoreError                       metadata or artifact store failure
    │   ├── ArtifactNotFound  (KeyError)
    │   └── ArtifactCorrupt              bytes on disk do not match their hash
    ├── NotFound  (KeyError)
    │   ├── DatasetNotFound
    │   ├── RunNotFound
    │   └── ModelNotFound
    ├── InvalidReference  (ValueError)   "NAME@vN" / "NAME@ALIAS" that does not parse
    ├── FormatError  (ValueError)        a file that cannot be read as COCO / YOLO / VOC / ...
    ├── ValidationFailed                 ``data validate`` found errors
    ├── ConsistencyError  (ValueError)   annotators that cannot be compared (one, unknown names)
    ├── InvalidImage  (ValueError)       an image array the runtime cannot use
    │   └── ImageDecodeError             bytes that are empty, corrupt, truncated or too big
    │       └── ImageTooLarge            more pixels than allowed (read from the header)
    ├── CostlyImage                      not decoded where its decode time must be bounded
    ├── ModelError                       a model or spec that cannot be used
    │   ├── SpecMismatch  (ValueError)   spec does not fit the ONNX graph
    │   └── ParityError                  exported ONNX disagrees with PyTorch
    ├── EvaluationError  (ValueError)    predictions that cannot be evaluated
    ├── ServeError                       the prediction server refused or could not answer
    │   ├── Overloaded                   the model's queue is full (HTTP 503 + Retry-After)
    │   ├── NotReady                     no model version loaded and warmed yet (HTTP 503)
    │   ├── DeadlineExceeded  (TimeoutError)  no answer within the request timeout (HTTP 504)
    │   └── (internal to detops.serve: HTTPProblem, BodyTooLarge — turned into responses)
    └── ReviewError                      the human review queue cannot do what was asked
        ├── ReviewItemNotFound  (KeyError)   no review item with that id (HTTP 404)
        ├── ReviewClosed                 the item was already reviewed or expired (HTTP 409)
        └── InvalidFeedback  (ValueError)    corrected boxes that do not fit the item (HTTP 422)

Messages name the thing and the fix, e.g.
``labels/0003.txt line 4: class id 7 is not in data.yaml names (0..2)``.
"""

from __future__ import annotations

from typing import Any


class DetopsError(Exception):
    """Base class of every detops error."""


class WorkspaceError(DetopsError):
    pass


class WorkspaceNotFound(WorkspaceError):
    pass


class ConfigError(DetopsError):
    pass


class StoreError(DetopsError):
    pass


class ArtifactNotFound(StoreError, KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else ""


class ArtifactCorrupt(StoreError):
    pass


class NotFound(DetopsError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class DatasetNotFound(NotFound):
    pass


class RunNotFound(NotFound):
    pass


class ModelNotFound(NotFound):
    pass


class InvalidReference(DetopsError, ValueError):
    pass


class FormatError(DetopsError, ValueError):
    """A file that cannot be read in the format it claims.

    ``file`` and ``record`` say where; the message says what and, where possible, the fix.
    """

    def __init__(self, file: object, record: object | None, problem: str) -> None:
        self.file = str(file)
        self.record = None if record is None else str(record)
        self.problem = problem
        where = self.file if self.record is None else f"{self.file} [{self.record}]"
        super().__init__(f"{where}: {problem}")


class ValidationFailed(DetopsError):
    pass


class ConsistencyError(DetopsError, ValueError):
    """Labels that cannot be compared between annotators: fewer than two, unknown names, or no
    image that two of them labelled."""


class InvalidImage(DetopsError, ValueError):
    """An image the runtime cannot use (wrong array shape or dtype)."""


class ImageDecodeError(InvalidImage):
    """Image bytes that cannot be decoded: empty, not an image, corrupt, truncated, too big."""


class ImageTooLarge(ImageDecodeError):
    """An image whose header declares more pixels than allowed (a decompression bomb)."""


class CostlyImage(DetopsError):
    """Refused before decoding by ``decode_image(..., predictable_only=True)``: a format whose
    decode time its pixel count does not bound (not JPEG / PNG / WebP / BMP, or a progressive
    JPEG). Not a client error: the caller decodes it elsewhere."""


class ModelError(DetopsError):
    pass


class SpecMismatch(ModelError, ValueError):
    pass


class ParityError(ModelError):
    pass


class EvaluationError(DetopsError, ValueError):
    pass


class ServeError(DetopsError):
    pass


class Overloaded(ServeError):
    """The model's request queue is full; retry after ``retry_after_s`` seconds."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotReady(ServeError):
    """No model version is loaded and warmed yet."""


class DeadlineExceeded(ServeError, TimeoutError):
    pass


class ReviewError(DetopsError):
    pass


class ReviewItemNotFound(ReviewError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ReviewClosed(ReviewError):
    pass


class InvalidFeedback(ReviewError, ValueError):
    """Corrected boxes that do not fit the item; ``errors`` lists ``{loc, msg}`` per problem."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self.errors = errors
        where = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)
        super().__init__(f"invalid feedback: {where}")


class DeploymentError(DetopsError):
    """A rollout action that cannot be done; the message names the deployment and the fix."""


class DeploymentNotFound(DeploymentError, NotFound):
    pass


class DeploymentExists(DeploymentError):
    pass


class InvalidTransition(DeploymentError, ValueError):
    pass


class StaleDeployment(DeploymentError):
    """The deployment's revision moved between reading it and deciding (another actor won)."""


class GatesConfigError(DeploymentError, ValueError):
    pass
