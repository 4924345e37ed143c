"""The baseline server: "the traditional way" of serving a Hugging Face model over HTTP.

A FastAPI app that calls `model.generate()` once per request, one request at a time under a lock (so
concurrent requests queue), streaming tokens through a generate() streamer; embeddings are one
forward per request under the same lock. It speaks just enough of the OpenAI API for
`modelplane-server bench` (completions with streaming and `stream_options.include_usage`,
`ignore_eos`, embeddings, models).

Run: .venv/bin/python bench/naive_server.py --model DIR [--embedding-model DIR] --port 8001
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer


class _QueueStreamer:
    """Hands each new token id from generate()'s thread to the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[int | None]) -> None:
        self._loop = loop
        self._queue = queue
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            self._loop.call_soon_threadsafe(self._queue.put_nowait, int(token))

    def end(self) -> None:
        self._loop.call_soon_threadsafe(self._queue.put_nowait, None)


def create_app(model_dir: str, embedding_dir: str) -> FastAPI:  # noqa: PLR0915  # routes inline
    model_id = Path(model_dir or embedding_dir).name
    tokenizer: Any = None
    model: Any = None
    eos = pad = 0
    if model_dir:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        eos = tokenizer.eos_token_id
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    embedder: Any = None
    embed_tokenizer: Any = None
    if embedding_dir:
        embed_tokenizer = AutoTokenizer.from_pretrained(embedding_dir)
        embedder = AutoModel.from_pretrained(embedding_dir, dtype=torch.float32).eval()
    lock = threading.Lock()  # one generate() at a time: the traditional way
    app = FastAPI()

    def generate(prompt_ids: list[int], max_tokens: int, ignore_eos: bool, streamer: Any) -> int:
        with lock, torch.inference_mode():
            input_ids = torch.tensor([prompt_ids])
            output = model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=max_tokens,
                do_sample=False,
                eos_token_id=None if ignore_eos else eos,
                pad_token_id=pad,
                streamer=streamer,
            )
        return int(output.shape[1] - len(prompt_ids))

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_id, "object": "model"}]}

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body = await request.json()
        prompt_ids = list(tokenizer(body["prompt"])["input_ids"])
        max_tokens = int(body.get("max_tokens") or 16)
        ignore_eos = bool(body.get("ignore_eos"))
        created = int(time.time())
        if not body.get("stream"):
            count = await asyncio.to_thread(generate, prompt_ids, max_tokens, ignore_eos, None)
            return JSONResponse(
                {
                    "object": "text_completion",
                    "created": created,
                    "model": model_id,
                    "choices": [{"index": 0, "text": "", "finish_reason": "length"}],
                    "usage": {
                        "prompt_tokens": len(prompt_ids),
                        "completion_tokens": count,
                        "total_tokens": len(prompt_ids) + count,
                    },
                }
            )
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[int | None] = asyncio.Queue()
        task = asyncio.create_task(
            asyncio.to_thread(
                generate, prompt_ids, max_tokens, ignore_eos, _QueueStreamer(loop, queue)
            )
        )

        async def events() -> AsyncIterator[str]:
            count = 0
            while (token := await queue.get()) is not None:
                count += 1
                chunk = {
                    "object": "text_completion",
                    "model": model_id,
                    "choices": [{"index": 0, "text": tokenizer.decode([token])}],
                }
                yield f"data: {json.dumps(chunk)}\n\n"
            await task
            usage = {
                "prompt_tokens": len(prompt_ids),
                "completion_tokens": count,
                "total_tokens": len(prompt_ids) + count,
            }
            yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    def embed_one(text: str) -> tuple[list[float], int]:
        with lock, torch.inference_mode():
            encoded = embed_tokenizer(text, return_tensors="pt")
            hidden = embedder(**encoded).last_hidden_state
            mask = encoded["attention_mask"][..., None].float()
            pooled = (hidden * mask).sum(1) / mask.sum(1)
            vector = torch.nn.functional.normalize(pooled, dim=-1)[0].tolist()
        return vector, int(encoded["input_ids"].shape[1])

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        body = await request.json()
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data, tokens = [], 0
        for index, text in enumerate(texts):
            vector, count = await asyncio.to_thread(embed_one, text)
            data.append({"object": "embedding", "index": index, "embedding": vector})
            tokens += count
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": "embedder",
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="", help="a causal LM directory (or none)")
    parser.add_argument("--embedding-model", default="")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    arguments = parser.parse_args()
    app = create_app(arguments.model, arguments.embedding_model)
    uvicorn.run(app, host=arguments.host, port=arguments.port, log_level="warning")


if __name__ == "__main__":
    main()
