"""Thin HTTP routes over the PredictionService.

Dependencies are `async def`: FastAPI runs plain `def` ones in a thread pool, a thread hop per request.

No `from __future__ import annotations` here: FastAPI must see the per-deployment request type itself.
"""

import hmac
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.config import Settings
from app.errors import Unauthorized
from app.schemas import (
    ClassValues,
    ErrorResponse,
    ModelInfo,
    ModelRef,
    Prediction,
    PredictRequestBase,
    PredictResponse,
    Status,
    request_model,
)
from app.service import PredictionService
from artifact.encoding import label_for

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "Malformed JSON or body",
        401: "Missing or wrong API key (when one is configured)",
        413: "Body over the byte limit",
        415: "Content type is not application/json",
        422: "Body does not match the schema or its limits",
        429: "Queue full: retry after the Retry-After seconds",
        500: "Inference failed for the batch holding this request",
        503: "Not ready, or shutting down",
    }.items()
}


async def get_service(request: Request) -> PredictionService:
    """The running service; NotReady or ShuttingDown (503) unless it is ready."""
    service: PredictionService = request.app.state.service
    service.require_ready()
    return service


ServiceDep = Annotated[PredictionService, Depends(get_service)]


def api_key_guard(settings: Settings) -> Callable[[Request], Awaitable[None]]:
    """The dependency that enforces PARASERVE_API_KEY (a no-op without one), for /predict and the v2 routes alike."""
    api_key = settings.api_key.get_secret_value().encode() if settings.api_key else None

    async def require_key(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key):
            raise Unauthorized("missing or invalid API key: send Authorization: Bearer <key>")

    return require_key


def build_router(settings: Settings) -> APIRouter:
    """Routes for one deployment; the /predict body type carries this deployment's limits."""
    PredictRequest = request_model(settings.max_pairs_per_request, settings.max_sentence_chars)
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
    async def predict(body: PredictRequest, request: Request, response: Response, service: ServiceDep) -> PredictResponse:  # type: ignore[valid-type]
        assert isinstance(body, PredictRequestBase)
        pairs = [(p.sentence1, p.sentence2) for p in body.pairs]  # type: ignore[attr-defined]
        outcome = await service.predict(pairs, disconnected=lambda: _wait_for_disconnect(request))
        _timing_headers(response, outcome.queue_seconds, outcome.inference_seconds)
        runtime = service.runtime
        threshold, want_logits = body.threshold, body.return_logits  # type: ignore[attr-defined]
        predictions = [
            Prediction(
                label=label_for(score, threshold),  # type: ignore[arg-type]
                score=score,
                probabilities=ClassValues(not_paraphrase=1.0 - score, paraphrase=score),
                logits=ClassValues(not_paraphrase=logits[0], paraphrase=logits[1]) if want_logits and logits else None,
                tokens=tokens,
                truncated=truncated,
            )
            for score, logits, tokens, truncated in zip(outcome.scores, outcome.logits, outcome.tokens, outcome.truncated, strict=True)
        ]
        for p in predictions:
            service.metrics.predictions.labels(label=p.label).inc()
        return PredictResponse(predictions=predictions, model=ModelRef(name=runtime.name, variant=runtime.variant, sha256=runtime.sha256))

    @router.get("/healthz", summary="The process is alive")
    async def healthz() -> Status:
        return Status(status="ok")

    @router.get("/readyz", summary="Model loaded and warmed up, worker alive", responses={503: {"model": Status}})
    async def readyz(request: Request, response: Response) -> Status:
        service: PredictionService = request.app.state.service
        if service.is_ready:
            return Status(status="ready")
        response.status_code = 503
        return Status(status="not_ready", detail=f"the service is {service.state}")

    @router.get("/model", dependencies=protected, responses=ERRORS, summary="The loaded artifact and effective settings")
    async def model(service: ServiceDep) -> ModelInfo:
        rt = service.runtime
        manifest = rt.manifest.to_json()
        manifest["source"].pop("checkpoint", None)  # a folder name on the build host: nothing a client needs
        return ModelInfo(
            name=rt.name,
            variant=rt.variant,
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

    metrics_deps = protected if settings.protect_metrics else []

    @router.get("/metrics", dependencies=metrics_deps, summary="Prometheus metrics", response_class=Response)
    async def metrics(request: Request) -> Response:
        return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)

    # HEAD as well as GET on the probes (load balancers and curl -I use it), kept out of the schema.
    for route in [r for r in router.routes if getattr(r, "path", "") in ("/healthz", "/readyz", "/metrics")]:
        router.add_api_route(route.path, route.endpoint, methods=["HEAD"], include_in_schema=False, dependencies=route.dependencies)  # type: ignore[attr-defined]
    return router


async def _wait_for_disconnect(request: Request) -> None:
    # The body is already read, so the next ASGI message is http.disconnect (or nothing until we answer).
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _timing_headers(response: Response, queue_s: float, inference_s: float) -> None:
    # Milliseconds, as text-embeddings-inference names them, plus the standard Server-Timing.
    response.headers["x-queue-time"] = f"{queue_s * 1000:.1f}"
    response.headers["x-inference-time"] = f"{inference_s * 1000:.1f}"
    response.headers["server-timing"] = f"queue;dur={queue_s * 1000:.1f}, inference;dur={inference_s * 1000:.1f}"
