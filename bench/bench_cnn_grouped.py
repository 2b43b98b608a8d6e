"""Is a batched CNN worth building? Per-client CNN steps vs stacked grouped convolutions (issue #16).

Run: ``PYTHONPATH=src .venv/bin/python bench/bench_cnn_grouped.py`` (under a minute, one thread).

Both sides do the same work: N clients x E = 5 SGD steps of batch 8 on 28x28 inputs with the
FLCert CNN (:class:`fedshield.models.MnistCNN`, about 47k weights). *per-client*: one module and
``torch.optim.SGD``, client after client (what engine=local runs for the CNN). *grouped C*: chunks
of C clients as one model, the convolutions as ``conv2d(groups=C)`` over stacked channels, the
fully connected layers as ``baddbmm`` over stacked weights, autograd for the backward pass and a
foreach SGD step. Random inputs (the speed does not depend on the values). Prints CPU seconds
of each and the ratio; engine=local keeps the per-client CNN unless grouped wins clearly.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from fedshield.models import MnistCNN

BATCH, STEPS, CLIENTS = 8, 5, 240
LEARNING_RATE = 0.05


def per_client(x: torch.Tensor, y: torch.Tensor) -> float:
    model = MnistCNN()
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
    started = time.process_time()
    for client in range(CLIENTS):
        for step in range(STEPS):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[client, step]), y[client, step]).backward()
            optimizer.step()
    return time.process_time() - started


def grouped(x: torch.Tensor, y: torch.Tensor, chunk: int) -> float:
    model = MnistCNN()
    conv1, conv2 = model.features[0], model.features[3]
    fc1, fc2 = model.classifier[1], model.classifier[3]
    params = [
        conv1.weight.detach().repeat(chunk, 1, 1, 1),
        conv1.bias.detach().repeat(chunk),
        conv2.weight.detach().repeat(chunk, 1, 1, 1),
        conv2.bias.detach().repeat(chunk),
        fc1.weight.detach().repeat(chunk, 1, 1),
        fc1.bias.detach().repeat(chunk, 1),
        fc2.weight.detach().repeat(chunk, 1, 1),
        fc2.bias.detach().repeat(chunk, 1),
    ]
    for p in params:
        p.requires_grad_()
    w1, b1, w2, b2, f1, c1, f2, c2 = params
    started = time.process_time()
    for start in range(0, CLIENTS, chunk):
        for step in range(STEPS):
            inputs = x[start : start + chunk, step].transpose(0, 1).reshape(BATCH, chunk, 28, 28)
            h = F.max_pool2d(F.relu(F.conv2d(inputs, w1, b1, groups=chunk)), 2)
            h = F.max_pool2d(F.relu(F.conv2d(h, w2, b2, groups=chunk)), 2)
            h = h.reshape(BATCH, chunk, -1).transpose(0, 1)  # (C, B, features)
            h = F.relu(torch.baddbmm(c1.unsqueeze(1), h, f1.transpose(1, 2)))
            logits = torch.baddbmm(c2.unsqueeze(1), h, f2.transpose(1, 2))
            labels = y[start : start + chunk, step].reshape(-1)
            loss = F.cross_entropy(logits.reshape(-1, 10), labels, reduction="sum") / BATCH
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                torch._foreach_add_(params, list(grads), alpha=-LEARNING_RATE)
    return time.process_time() - started


def main() -> None:
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(CLIENTS, STEPS, BATCH, 1, 28, 28, generator=generator)
    y = torch.randint(0, 10, (CLIENTS, STEPS, BATCH), generator=generator)
    for _ in range(2):  # the second repetition is warm
        reference = per_client(x, y)
        print(f"per-client: {reference:.3f} s CPU for {CLIENTS} clients x {STEPS} steps")
        for chunk in (1, 4, 8, 16):
            seconds = grouped(x, y, chunk)
            print(f"  grouped C={chunk:2d}: {seconds:.3f} s, per-client / grouped {reference / seconds:.2f}x")


if __name__ == "__main__":
    main()
