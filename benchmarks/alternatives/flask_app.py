"""The design of the Flask service this project replaces: one process, Flask's own threaded server,
`POST /predict` with a multipart field `image`, one forward pass per request.

    python -m benchmarks.alternatives.flask_app --model models/latest/model.pt --port 5000
"""

import argparse

import torch
from cifar10_answers import answer_bodies
from cifar10_images import InvalidImage, decode_image
from flask import Flask, Response, jsonify, request

from benchmarks.alternatives import CLASSES, load_model, pixel_batch


def create_app(model_path: str) -> Flask:
    app = Flask(__name__)
    model = load_model(model_path)

    @app.post("/predict")
    def predict():
        upload = request.files.get("image")
        if upload is None:
            return jsonify(error="no file field 'image' in the form"), 400
        try:
            pixels = decode_image(upload.read())
        except InvalidImage as error:
            return jsonify(error=str(error)), 400
        with torch.inference_mode():
            logits = model(pixel_batch([pixels]))
        return Response(answer_bodies(logits, CLASSES)[0], mimetype="application/json")

    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args()
    create_app(args.model).run(host="127.0.0.1", port=args.port)
