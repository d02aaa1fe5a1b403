"""POST /v1/classify."""

from bertserve import metrics
from bertserve.api.base import TaskAPI
from bertserve.api.encoders import Tokens
from bertserve.runtime.encoding import TextEncoder
from bertserve.schemas import ClassifyRequest, ClassifyResponse


class ClassifyAPI(TaskAPI):
    task = "classification"
    endpoint = "classify"
    request_type = ClassifyRequest
    response_type = ClassifyResponse

    def tokenize(self, encoder: TextEncoder, request: ClassifyRequest) -> Tokens:
        return Tokens(encoder.key, encoder.encode(request.as_list(), request.truncate))

    def run_model(self, model, requests: list) -> list:
        answers = model.classify(requests, self.settings.max_batch_size, self.settings.max_batch_tokens)
        for per_request in answers:
            for ranking in per_request:
                best = max(ranking, key=lambda item: item["score"])
                metrics.PREDICTIONS.labels(model.name, model.version, best["label"]).inc()
                metrics.PREDICTION_SCORE.labels(model.name, model.version, best["label"]).observe(
                    best["score"]
                )
        return answers
