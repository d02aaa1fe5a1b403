"""POST /v1/fill-mask."""

from starlette.responses import Response

from bertserve.api.base import TaskAPI
from bertserve.schemas import FillMaskRequest, FillMaskResponse


class FillMaskAPI(TaskAPI):
    task = "fill-mask"
    endpoint = "fill-mask"

    def decode_request(self, request: FillMaskRequest):
        from bertserve.runtime.loaded import Prepared

        inputs = request.as_list()
        self.check_limits(inputs)
        model = self.model_for(request.model)
        targets = model.target_ids(request.targets) if request.targets else None
        return Prepared(
            model, model.encode_masked(inputs, request.truncate), top_k=request.top_k, target_ids=targets
        )

    def run_model(self, model, requests: list) -> list:
        return model.fill_mask(requests, self.settings.max_batch_size, self.settings.max_batch_tokens)

    def encode_response(self, output) -> FillMaskResponse:  # the annotation documents the body in /docs
        response: Response = super().encode_response(output)
        return response
