"""POST /v1/classify."""

from starlette.responses import Response

from bertserve import metrics
from bertserve.api.base import TaskAPI
from bertserve.schemas import ClassifyRequest, ClassifyResponse


class ClassifyAPI(TaskAPI):
    task = "classification"
    endpoint = "classify"

    def decode_request(self, request: ClassifyRequest):
        from bertserve.runtime.loaded import Prepared

        inputs = request.as_list()
        self.check_limits(inputs)
        model = self.model_for(request.model)
        return Prepared(model, model.encode(inputs, request.truncate), top_k=request.top_k)

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

    def encode_response(self, output) -> ClassifyResponse:  # the annotation documents the body in /docs
        response: Response = super().encode_response(output)
        return response
