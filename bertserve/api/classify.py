"""POST /v1/classify, and the classification routes of other protocols: TEI's /predict, Hugging Face's
POST / (text_classification) and KServe's v2 infer. Every route's request becomes a ClassifyJob in the HTTP
process, so all share one request queue, the same inference workers and their batches; the job's `shape`
says how its answer is written."""

from bertserve import metrics
from bertserve.api.base import Shaped, TaskAPI
from bertserve.api.encoders import Tokens
from bertserve.runtime.encoding import TextEncoder
from bertserve.schemas import ClassifyJob, ClassifyRequest, ClassifyResponse


class ClassifyAPI(TaskAPI):
    task = "classification"
    endpoint = "classify"
    request_type = ClassifyJob
    response_type = ClassifyResponse

    def routes(self) -> dict[str, tuple[type, type]]:
        from bertserve.protocols import kserve, tei

        return {
            self.api_path: (ClassifyRequest, ClassifyResponse),
            tei.PREDICT_PATH: (tei.PredictRequest, tei.PredictResponse),
            tei.HF_CLASSIFY_PATH: (tei.HfClassifyRequest, list[tei.PredictResponse]),
            kserve.INFER_PATHS["classification"]: (kserve.ClassifyInferRequest, kserve.InferResponse),
        }

    def tokenize(self, encoder: TextEncoder, request: ClassifyJob) -> Tokens:
        return Tokens(
            encoder.key, encoder.encode(request.as_list(), request.truncate, request.truncation_direction)
        )

    def prepare(self, model, tokens: Tokens, request: ClassifyJob):
        from bertserve.runtime.loaded import Prepared

        return Prepared(model, tokens.inputs, top_k=request.top_k, options=request)

    def run_model(self, model, requests: list) -> list:
        answers = model.classify(requests, self.settings.max_batch_size, self.settings.max_batch_tokens)
        for request, per_request in zip(requests, answers, strict=True):
            if request.options.function is None:  # the model's own scores: what the drift metrics watch
                for ranking in per_request:
                    best = max(ranking, key=lambda item: item["score"])
                    metrics.PREDICTIONS.labels(model.name, model.version, best["label"]).inc()
                    metrics.PREDICTION_SCORE.labels(model.name, model.version, best["label"]).observe(
                        best["score"]
                    )
        return [_answer(model, r.options, a) for r, a in zip(requests, answers, strict=True)]


def _answer(model, job: ClassifyJob, rankings: list[list[dict]]):
    """Our body (wrapped by response_body), or the route's protocol shape."""
    if job.shape == "bertserve":
        return rankings
    if job.shape == "kserve":
        from bertserve.protocols.kserve import classification_outputs

        return Shaped(classification_outputs(model, job, rankings))
    rankings = [
        [{"score": item["score"], "label": item["label"]} for item in ranking] for ranking in rankings
    ]
    # TEI answers one input with its ranking, a batch with a list of them; Hugging Face always nests
    return Shaped(rankings[0] if job.shape == "tei" else rankings)
