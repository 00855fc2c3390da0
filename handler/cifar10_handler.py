"""TorchServe handler for the CIFAR-10 SimpleCNN: image bytes in, the seed's JSON answer out.

Self-contained on purpose: it runs inside the TorchServe worker, which has this file,
cifar10_images.py, the TorchScript model and index_to_name.json from the .mar, and nothing of
this repository. The model normalizes pixels itself, so the handler only decodes images.

Each request of a batch stands alone: one that is not a decodable image gets HTTP 400 and a JSON
error naming the problem, the others of its batch get their predictions, the worker stays up.
"""

import json

import numpy as np
import torch
from cifar10_images import IMAGE_SIZE, InvalidImage, decode_image, error_body, request_payload
from ts.torch_handler.base_handler import BaseHandler

TOP_K = 3


class Cifar10Handler(BaseHandler):
    """preprocess (decode a batch) -> inference (one forward pass) -> postprocess (JSON per request)."""

    def initialize(self, context):
        super().initialize(context)  # loads the TorchScript model onto self.device, reads index_to_name.json
        if not self.mapping:
            raise RuntimeError("index_to_name.json is missing from the model archive")
        self.classes = [self.mapping[str(i)] for i in range(len(self.mapping))]
        self.model = self.model.to(memory_format=torch.channels_last)
        with torch.inference_mode():  # first call builds TorchScript's execution plan; pay it here, not on a request
            self.model(torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8, device=self.device))

    def preprocess(self, requests):
        """Decodes each request; returns the batch of good images and one error (or None) per request."""
        images, errors = [], []
        for index, row in enumerate(requests):
            try:
                images.append(decode_image(request_payload(row, self._text_fields(index, row))))
                errors.append(None)
            except InvalidImage as error:
                errors.append(error)
        if not images:
            return None, errors
        # N x H x W x C -> N x C x H x W: a channels_last view, the layout the model runs fastest in.
        batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        return batch, errors

    def _text_fields(self, index, row) -> set:
        """Form fields sent as text: TorchServe gives an uploaded file its content type, a text field none."""
        if not isinstance(row, dict):
            return set()
        return {name for name in row if name != "body" and not (self.context.get_request_header(index, name) or {}).get("content-type")}

    def inference(self, data, *args, **kwargs):
        batch, errors = data
        if batch is None:
            return None, errors
        with torch.inference_mode():
            probabilities = torch.softmax(self.model(batch).float(), dim=1)
            top = probabilities.topk(TOP_K, dim=1)
        # Rounded down to 4 decimals, so that the confidences shown never sum above 1.
        return (torch.floor(top.values.double() * 1e4).div(1e4).tolist(), top.indices.tolist()), errors

    def postprocess(self, data):
        predictions, errors = data
        answers = iter(zip(*predictions)) if predictions is not None else iter(())
        responses = []
        for index, error in enumerate(errors):
            self.context.set_response_content_type(index, "application/json")
            if error is not None:
                self.context.set_response_status(400, "Bad Request", index)
                responses.append(error_body(error))
                continue
            confidences, classes = next(answers)
            top = [{"class": self.classes[c], "confidence": p} for p, c in zip(confidences, classes)]
            responses.append(
                json.dumps({"prediction": top[0]["class"], "confidence": top[0]["confidence"], "top3_predictions": top})
            )
        return responses
