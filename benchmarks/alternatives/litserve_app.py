"""The same model behind LitServe with its own dynamic batching, as its documentation sets it up:
a LitAPI with decode_request / batch / predict / unbatch / encode_response, multipart upload.

    python -m benchmarks.alternatives.litserve_app --model models/latest/model.pt --port 8000
"""

import argparse

import litserve as ls
import torch
from cifar10_answers import answer_bodies
from cifar10_images import InvalidImage, decode_image
from fastapi import HTTPException, Response

from benchmarks.alternatives import CLASSES, load_model, pixel_batch


class Cifar10API(ls.LitAPI):
    def __init__(self, model_path: str, **kwargs):
        super().__init__(**kwargs)
        self.model_path = model_path

    def setup(self, device):
        self.model = load_model(self.model_path)

    def decode_request(self, request):
        try:
            return decode_image(request["image"].file.read())
        except (KeyError, AttributeError):
            raise HTTPException(400, "no file field 'image' in the form") from None
        except InvalidImage as error:
            raise HTTPException(400, str(error)) from None

    def batch(self, inputs):
        return pixel_batch(inputs)

    def predict(self, batch):
        with torch.inference_mode():
            return answer_bodies(self.model(batch), CLASSES)

    def unbatch(self, output):
        return output

    def encode_response(self, output) -> Response:
        return Response(output, media_type="application/json")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--batch-timeout", type=float, default=0.002, help="seconds")
    args = parser.parse_args()
    api = Cifar10API(args.model, max_batch_size=args.max_batch_size, batch_timeout=args.batch_timeout)
    ls.LitServer(api, accelerator="cpu", workers_per_device=1).run(
        host="127.0.0.1", port=args.port, generate_client_file=False
    )
