"""paraserve's own HTTP API: POST /predict, the probes, GET /models, GET /model and /metrics; a thin translator over
the core.

/predict's body is parsed by its pydantic schema (structure: types and field names, 422); the model it names (the
default when none), the limits, the threshold and scoring are the core's (`PredictionService.score`), shared with
every other protocol.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.core.models import Cascade, ServedModel
from app.core.service import PredictionService
from app.protocols.http_common import ServiceDep, api_key_guard, client_of, disconnect_of, timing_headers
from app.protocols.paraserve_schemas import (
    CascadeInfo,
    ClassValues,
    ErrorResponse,
    ModelInfo,
    ModelList,
    ModelRef,
    ModelSummary,
    Prediction,
    PredictRequest,
    PredictResponse,
    Status,
)
from app.shared.config import Settings

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "Malformed JSON or body",
        401: "Missing or wrong API key (when one is configured)",
        404: "No model by that name in this server's repository",
        413: "Body over the byte limit",
        415: "Content type is not application/json",
        422: "Body does not match the schema or its limits",
        429: "Queue full: retry after the Retry-After seconds",
        500: "Inference failed for the batch holding this request",
        503: "Not ready, or shutting down",
    }.items()
}


def build_router(settings: Settings) -> APIRouter:
    """paraserve's routes for one deployment."""
    require_key = api_key_guard(settings)
    protected = [Depends(require_key)]
    router = APIRouter()

    @router.post(
        "/predict",
        dependencies=protected,
        responses=ERRORS,
        summary="Are these sentence pairs paraphrases?",
        response_model_exclude_none=True,
    )
    async def predict(body: PredictRequest, request: Request, response: Response, service: ServiceDep) -> PredictResponse:
        scored = await service.score(
            [(p.sentence1, p.sentence2) for p in body.pairs],
            model=body.model,
            threshold=body.threshold,
            client=client_of(request, settings.client_id_header),
            gone=disconnect_of(request),
        )
        timing_headers(response, scored)
        predictions = [
            Prediction(
                label=r.label,  # type: ignore[arg-type]
                score=r.score,
                probabilities=ClassValues(not_paraphrase=r.probabilities[0], paraphrase=r.probabilities[1]),
                logits=ClassValues(not_paraphrase=r.logits[0], paraphrase=r.logits[1]) if body.return_logits and r.logits else None,
                tokens=r.tokens,
                truncated=r.truncated,
                decided_by=r.decided_by,
            )
            for r in scored.results
        ]
        model = scored.model
        return PredictResponse(predictions=predictions, model=ModelRef(name=model.name, variant=model.variant, sha256=model.sha256))

    @router.get("/healthz", summary="The process is alive")
    async def healthz() -> Status:
        return Status(status="ok")

    @router.get("/readyz", summary="Every model loaded and warmed up, workers alive", responses={503: {"model": Status}})
    async def readyz(request: Request, response: Response) -> Status:
        service: PredictionService = request.app.state.service
        if service.is_ready:
            return Status(status="ready")
        response.status_code = 503
        return Status(status="not_ready", detail=f"the service is {service.state}")

    @router.get("/models", dependencies=protected, responses=ERRORS, summary="Every model this server answers with")
    async def models(service: ServiceDep) -> ModelList:
        service.require_ready()
        return ModelList(
            models=[
                ModelSummary(
                    name=name,
                    kind=m.kind,  # type: ignore[arg-type]
                    version=m.id.version,
                    variant=m.id.variant,
                    engine=m.id.engine,
                    ready=m.ready,
                    default=name == service.default,
                    stages=list(m.stages),
                )
                for name, m in service.models.items()
            ]
        )

    @router.get("/model", dependencies=protected, responses=ERRORS, summary="One loaded model (the default, or ?model=) and the settings")
    async def model(service: ServiceDep, model: str | None = None) -> ModelInfo | CascadeInfo:
        found = service.get(model)
        if isinstance(found, Cascade):
            return CascadeInfo(
                name=found.name,
                fast=found.fast.name,
                accurate=found.accurate.name,
                band={"low": found.band.low, "high": found.band.high},
                source=found.source,
            )
        return model_info(found, service, settings)

    metrics_deps = protected if settings.protect_metrics else []

    @router.get("/metrics", dependencies=metrics_deps, summary="Prometheus metrics", response_class=Response)
    async def metrics(request: Request) -> Response:
        return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)

    # HEAD as well as GET on the probes (load balancers and curl -I use it), kept out of the schema.
    for route in [r for r in router.routes if getattr(r, "path", "") in ("/healthz", "/readyz", "/metrics")]:
        router.add_api_route(route.path, route.endpoint, methods=["HEAD"], include_in_schema=False, dependencies=route.dependencies)  # type: ignore[attr-defined]
    return router


def model_info(model: ServedModel, service: PredictionService, settings: Settings) -> ModelInfo:
    rt = model.runtime
    manifest: dict[str, Any] = rt.manifest.to_json()
    manifest["source"].pop("checkpoint", None)  # a folder name on the build host: nothing a client needs
    return ModelInfo(
        name=model.name,
        variant=rt.variant,
        engine=rt.engine_name,
        selection=rt.selection,
        sha256=rt.sha256,
        model_bytes=rt.model_bytes,
        trace_shape={"batch_size": rt.batch_size, "seq_len": rt.seq_len},
        padding=rt.padding,
        random_init=rt.manifest.source.random_init,
        workers=settings.workers,
        cpu=service.cpu,
        manifest=manifest,
        settings=settings.public(),
    )
