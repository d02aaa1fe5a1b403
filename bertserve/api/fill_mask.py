"""POST /v1/fill-mask."""

from bertserve.api.base import TaskAPI
from bertserve.api.encoders import Tokens
from bertserve.limits import check_answer
from bertserve.runtime.encoding import TextEncoder
from bertserve.schemas import FillMaskRequest

# A candidate's bytes besides its sequence: {"token": 12345, "token_str": "...", "score": 0.1234..., ...}
CANDIDATE_BYTES = 80
# A word piece of the filled-in sequence, decoded with its space: English averages 4 to 5 characters, a
# [MASK] left in place 7; a cut input's text overstates its sequence, this bounds it
CHARS_PER_TOKEN = 8


class FillMaskAPI(TaskAPI):
    task = "fill-mask"
    endpoint = "fill-mask"
    job_type = FillMaskRequest

    def tokenize(self, encoder: TextEncoder, request: FillMaskRequest) -> Tokens:
        targets = encoder.target_ids(request.targets) if request.targets else None
        return Tokens(encoder.key, encoder.encode_masked(request.as_list(), request.truncate), targets)

    def check_answer(self, prepared, job: FillMaskRequest) -> None:
        """Every mask answers top_k candidates, each with the whole filled-in text: 64 inputs of 60 masks
        with top_k 100 would be ~190 MB, and as many decodes of the text."""
        candidates = min(job.top_k, len(prepared.target_ids)) if prepared.target_ids else job.top_k
        mask_id, masks, size = prepared.model.mask_id, 0, 0
        for text, item in zip(job.as_list(), prepared.inputs, strict=True):
            count = item.ids.count(mask_id)
            masks += count
            size += count * candidates * (CANDIDATE_BYTES + min(len(text), len(item.ids) * CHARS_PER_TOKEN))
        check_answer(size, self.settings, f"{masks} masks x {candidates} candidates, each with its text")

    def run_model(self, model, requests: list) -> list:
        return model.fill_mask(requests, self.settings.max_batch_size, self.settings.max_batch_tokens)
