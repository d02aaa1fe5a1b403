"""POST /v1/fill-mask."""

from bertserve.api.base import TaskAPI
from bertserve.api.encoders import Tokens
from bertserve.runtime.encoding import TextEncoder
from bertserve.schemas import FillMaskRequest, FillMaskResponse


class FillMaskAPI(TaskAPI):
    task = "fill-mask"
    endpoint = "fill-mask"
    request_type = FillMaskRequest
    response_type = FillMaskResponse

    def tokenize(self, encoder: TextEncoder, request: FillMaskRequest) -> Tokens:
        targets = encoder.target_ids(request.targets) if request.targets else None
        return Tokens(encoder.key, encoder.encode_masked(request.as_list(), request.truncate), targets)

    def run_model(self, model, requests: list) -> list:
        return model.fill_mask(requests, self.settings.max_batch_size, self.settings.max_batch_tokens)
