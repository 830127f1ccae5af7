r"""The PyTorch baselines of the benchmark: the paper's networks as users train them, three ways.

A masked training step as PyTorch lottery-ticket code writes it (OpenLTH and most tutorials): the
forward pass on the masked weights, ``loss.backward()``, gradients of pruned weights zeroed, the
optimizer step, the weights masked again. float32, ``torch.set_num_threads(threads)``. The
networks mirror ``lth_jax.models`` (same layers, widths, batch norm, optimizer), so the FLOPs are the
same. Variants (``--variant``):

* ``eager``: eager mode, NCHW tensors (PyTorch's default);
* ``channels_last``: eager mode, the model and each batch in ``torch.channels_last`` (NHWC in
  memory), which oneDNN's CPU convolutions prefer;
* ``compile``: the whole train step (forward, ``backward()``, masking, optimizer step) under
  ``torch.compile`` (Inductor), channels-last, and the evaluation forward pass compiled too. Its
  first steps compile; ``compile_s`` is their time beyond the steady state's.

    python benchmarks/torch_reference.py --model=conv2 --steps=20        # steps/s of one model
    python benchmarks/torch_reference.py --model=resnet20 --batch=128 --variant=compile

Used by ``benchmarks/benchmark.py`` in a subprocess of its own; prints one ``RESULT {json}`` line.
"""

from __future__ import annotations

import argparse
import json
import time


def build(name: str, channels: int, size: int):
    """(torch module, optimizer name) mirroring ``lth_jax.models.create(name)``."""
    import torch.nn as tnn

    def conv_stack(widths):
        layers, c = [], channels
        for w in widths:
            for _ in range(2):
                layers += [tnn.Conv2d(c, w, 3, padding=1), tnn.ReLU()]
                c = w
            layers.append(tnn.MaxPool2d(2))
        return layers, c * (size // 2 ** len(widths)) ** 2

    if name == "lenet300_100":
        return tnn.Sequential(tnn.Flatten(), tnn.Linear(channels * size * size, 300), tnn.ReLU(),
                              tnn.Linear(300, 100), tnn.ReLU(), tnn.Linear(100, 10)), "adam"
    if name in ("conv2", "conv4", "conv6"):
        widths = {"conv2": (64,), "conv4": (64, 128), "conv6": (64, 128, 256)}[name]
        layers, flat = conv_stack(widths)
        return tnn.Sequential(*layers, tnn.Flatten(), tnn.Linear(flat, 256), tnn.ReLU(),
                              tnn.Linear(256, 256), tnn.ReLU(), tnn.Linear(256, 10)), "adam"
    if name == "vgg19":
        layers, c = [], channels
        stages = ((64, 2), (128, 2), (256, 4), (512, 4), (512, 4))
        for i, (w, depth) in enumerate(stages):
            for _ in range(depth):
                layers += [tnn.Conv2d(c, w, 3, padding=1, bias=False), tnn.BatchNorm2d(w),
                           tnn.ReLU()]
                c = w
            if i < len(stages) - 1:
                layers.append(tnn.MaxPool2d(2))
        return tnn.Sequential(*layers, tnn.AdaptiveAvgPool2d(1), tnn.Flatten(),
                              tnn.Linear(c, 10)), "momentum"
    if name == "resnet20":
        class Block(tnn.Module):
            def __init__(self, cin, cout, stride):
                super().__init__()
                self.body = tnn.Sequential(
                    tnn.Conv2d(cin, cout, 3, stride, 1, bias=False), tnn.BatchNorm2d(cout),
                    tnn.ReLU(), tnn.Conv2d(cout, cout, 3, 1, 1, bias=False), tnn.BatchNorm2d(cout))
                self.shortcut = (tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, bias=False),
                                                tnn.BatchNorm2d(cout))
                                 if stride != 1 or cin != cout else tnn.Identity())

            def forward(self, x):
                return (self.body(x) + self.shortcut(x)).relu()

        layers, c = [tnn.Conv2d(channels, 16, 3, padding=1, bias=False), tnn.BatchNorm2d(16),
                     tnn.ReLU()], 16
        for stage, w in enumerate((16, 32, 64)):
            for block in range(3):
                layers.append(Block(c, w, 2 if stage > 0 and block == 0 else 1))
                c = w
        return tnn.Sequential(*layers, tnn.AdaptiveAvgPool2d(1), tnn.Flatten(),
                              tnn.Linear(c, 10)), "momentum"
    raise ValueError(f"no PyTorch reference for {name!r}")


VARIANTS = ("eager", "channels_last", "compile")
#: Steps before the timed ones: the compiled step compiles in its first call and again once the
#: optimizer's state exists (its second); eager steps warm oneDNN's caches.
WARMUP_STEPS = 3


def run(model_name: str, batch: int, steps: int, threads: int, shape=(32, 32, 3),
        train_size: int = 2000, eval_examples: int = 0, eval_every: int = 0,
        variant: str = "eager") -> dict:
    """Train ``steps`` masked steps; every ``eval_every`` steps also evaluate ``eval_examples``
    examples (0: no evaluation). ``variant`` is one of :data:`VARIANTS`.

    Returns ``steps_per_s`` of the timed steps (all but the first ``WARMUP_STEPS``), ``seconds``
    (the wall time of the whole call, start-up and compilation included), ``compile_s`` (the
    warm-up steps' time beyond as many steady steps), ``variant``, ``threads`` and ``torch``
    (the version).
    """
    import torch

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    if steps <= WARMUP_STEPS:
        raise ValueError(f"steps must exceed the {WARMUP_STEPS} warm-up steps; got {steps}")
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    start = time.perf_counter()
    size, _, channels = shape
    model, optimizer_name = build(model_name, channels, size)
    memory_format = (torch.channels_last if variant != "eager" and model_name != "lenet300_100"
                     else torch.contiguous_format)
    model = model.to(memory_format=memory_format)
    masks = {n: torch.rand_like(p) < 0.8 for n, p in model.named_parameters() if p.dim() > 1}
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in masks:
                p.mul_(masks[n])
    if optimizer_name == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    images = torch.randn(train_size, channels, size, size).contiguous(memory_format=memory_format)
    labels = torch.randint(0, 10, (train_size,))
    eval_images = torch.randn(max(eval_examples, 1), channels, size, size).contiguous(
        memory_format=memory_format)
    loss_fn = torch.nn.CrossEntropyLoss()
    params = dict(model.named_parameters())

    def train_step(x, y):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        for n, m in masks.items():
            params[n].grad.mul_(m)
        optimizer.step()
        with torch.no_grad():
            for n, m in masks.items():
                params[n].mul_(m)
        return loss

    forward = model
    if variant == "compile":
        train_step = torch.compile(train_step)
        forward = torch.compile(model)

    def step(i):
        idx = torch.randint(0, train_size, (batch,))
        x = images[idx].contiguous(memory_format=memory_format)  # a no-op where it already is
        model.train()
        loss = train_step(x, labels[idx])
        if eval_every and (i + 1) % eval_every == 0:
            model.eval()
            with torch.no_grad():
                for chunk in eval_images.split(500):
                    forward(chunk).argmax(-1)
        return loss

    t0 = time.perf_counter()
    for i in range(WARMUP_STEPS):
        step(i)
    warmup = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(WARMUP_STEPS, steps):
        step(i)
    timed = time.perf_counter() - t0
    steady = timed / (steps - WARMUP_STEPS)
    return {"steps_per_s": 1 / steady, "seconds": time.perf_counter() - start,
            "compile_s": max(warmup - WARMUP_STEPS * steady, 0.0), "variant": variant,
            "threads": threads, "torch": torch.__version__}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="conv2")
    parser.add_argument("--batch", type=int, default=60)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shape", default="32,32,3")
    parser.add_argument("--eval_examples", type=int, default=0)
    parser.add_argument("--eval_every", type=int, default=0)
    parser.add_argument("--variant", default="eager", choices=VARIANTS)
    args = parser.parse_args()
    shape = tuple(int(s) for s in args.shape.split(","))
    result = run(args.model, args.batch, args.steps, args.threads, shape,
                 eval_examples=args.eval_examples, eval_every=args.eval_every,
                 variant=args.variant)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
