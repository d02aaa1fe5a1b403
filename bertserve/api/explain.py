"""POST /v1/explain: integrated-gradients attributions and attention for classification models.

An explanation costs `steps` forward and backward passes (seconds of CPU), so it runs on a thread of its own
in each inference process, one at a time, with its own queue (engine/worker.py's Explainer): a burst of
explanations waits there and never delays /v1/classify. The thread loads its models on the first explanation
(Settings.explain_workers 0 serves no /v1/explain), every classification version in float32 whatever the
configured backend: the gradients need the PyTorch module (runtime/explain.py).
"""

from bertserve.api.base import TaskAPI
from bertserve.api.encoders import Tokens
from bertserve.errors import ClientError
from bertserve.runtime.encoding import TextEncoder
from bertserve.schemas import ExplainRequest

# [layer][head][query][key] grows with the square of the tokens: 6 x 12 x 128^2 ~ 1.2 M numbers already
ATTENTION_MAX_TOKENS = 128


class ExplainAPI(TaskAPI):
    task = "classification"
    endpoint = "explain"
    job_type = ExplainRequest

    def __init__(self, settings) -> None:
        super().__init__(settings)
        # One request per batch: an explanation is many passes already, and one that waited past its timeout
        # (its client has its 504) is then dropped before it is computed rather than after its batch-mates
        self.max_batch_size = 1

    def load(self, device: str) -> None:
        self.settings = self.settings.model_copy(update={"backend": "fp32", "model_backends": ""})
        super().load(device)

    def tokenize(self, encoder: TextEncoder, request: ExplainRequest) -> Tokens:
        (encoded,) = encoder.encode(request.as_list(), request.truncate)
        if request.attention and len(encoded.ids) > ATTENTION_MAX_TOKENS:
            raise ClientError(
                422,
                f"attention is answered for inputs of at most {ATTENTION_MAX_TOKENS} tokens; this one has "
                f"{len(encoded.ids)} (send attention=false for the attributions alone)",
                "attention_too_large",
            )
        return Tokens(encoder.key, [encoded])

    def prepare(self, model, tokens: Tokens, request: ExplainRequest):
        from bertserve.runtime.explain import ExplainJob

        if request.target is not None and request.target not in model.labels:
            raise ClientError(
                422,
                f"target {request.target!r} is not a label of model {model.ref}: {', '.join(model.labels)}",
                "unknown_label",
            )
        return ExplainJob(
            model, request.inputs, request.target, request.steps, request.attention, request.truncate
        )

    def run_model(self, model, requests: list) -> list:
        from bertserve.runtime.cpu import release_freed_memory
        from bertserve.runtime.explain import explain

        answers, model.padded_tokens = [], 0
        for job in requests:
            explanation, tokens = explain(job)
            answers.append([explanation])
            model.padded_tokens += tokens
        # the backward passes' activations (hundreds of MB for a long text) are freed: give them back, or
        # the worker stays at its largest explanation's peak (milliseconds against seconds of explaining)
        release_freed_memory()
        return answers
