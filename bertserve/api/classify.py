"""Classification: every route whose queue is `classify` in the route table (routes.py) becomes a ClassifyJob
in the HTTP process, so all share one request queue, the same inference workers and their batches. The
result is each input's labels with their scores, best first; the route's adapter (protocols/) writes it
for the route's clients."""

from bertserve import metrics
from bertserve.api.base import TaskAPI
from bertserve.api.encoders import Tokens
from bertserve.jobs import ClassifyJob
from bertserve.runtime.encoding import TextEncoder


class ClassifyAPI(TaskAPI):
    task = "classification"
    endpoint = "classify"
    job_type = ClassifyJob

    def tokenize(self, encoder: TextEncoder, request: ClassifyJob) -> Tokens:
        return Tokens(
            encoder.key, encoder.encode(request.as_list(), request.truncate, request.truncation_direction)
        )

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
        return answers
