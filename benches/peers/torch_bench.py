"""PyTorch reference for hdr's benchmarks: the same architectures, layer for layer, the same shapes.

Measures, with 2 threads on the CPU:
  train_step/<model>/b64      forward + backward + Adam step (auxiliary loss included)
  inference/<model>/f32/b{1,64,256}
  layer/<id>/b64              forward + backward of each layer in layers.json

Run (torch in a virtualenv outside the repo; not part of CI):
  python3 -m venv /tmp/torch && /tmp/torch/bin/pip install torch numpy
  /tmp/torch/bin/python benches/peers/torch_bench.py [--json out.json]
"""
import argparse
import json
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

torch.set_num_threads(2)
HERE = os.path.dirname(os.path.abspath(__file__))


class LeNet5(nn.Module):
    """hdr_models::LeNet5Config::default(): ReLU, max pooling, 61,706 parameters."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 6, 5, padding=2)
        self.c3 = nn.Conv2d(6, 16, 5)
        self.f5 = nn.Linear(400, 120)
        self.f6 = nn.Linear(120, 84)
        self.out = nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        x = F.max_pool2d(F.relu(self.c3(x)), 2)
        x = F.relu(self.f5(x.flatten(1)))
        x = F.relu(self.f6(x))
        return self.out(x), None


V1_BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1),
             (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)]


def conv_bn(c_in, c_out, k, stride, groups=1):
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class MobileNetHdr(nn.Module):
    """hdr_models::MobileNetHdrConfig::paper(): grey input, width 0.25 x boost 2, stride 2 at
    blocks 1, 3, 5 only, auxiliary head (1x1 conv 128 + BN + ReLU, GAP, linear) after block 6,
    dropout 0.1 before the head."""

    def __init__(self, width=0.5, strided=(1, 3, 5), aux_after=6):
        super().__init__()
        ch = lambda c: max(1, round(c * width))
        self.stem = conv_bn(1, ch(32), 3, 1)
        blocks, c = [], ch(32)
        for i, (out, _) in enumerate(V1_BLOCKS):
            s = 2 if i in strided else 1
            blocks.append(nn.Sequential(conv_bn(c, c, 3, s, groups=c), conv_bn(c, ch(out), 1, 1)))
            c = ch(out)
            if i == aux_after:
                aux_c = c
        self.blocks = nn.ModuleList(blocks)
        self.aux_after = aux_after
        self.aux_conv = conv_bn(aux_c, 128, 1, 1)
        self.aux_fc = nn.Linear(128, 10)
        self.drop = nn.Dropout(0.1)
        self.head = nn.Linear(c, 10)

    def forward(self, x):
        x = self.stem(x)
        aux = None
        for i, b in enumerate(self.blocks):
            x = b(x)
            if self.training and i == self.aux_after:
                aux = self.aux_fc(self.aux_conv(x).mean((2, 3)))
        return self.head(self.drop(x.mean((2, 3)))), aux


MODELS = {"lenet5": LeNet5, "mobilenet_hdr": MobileNetHdr}


def timeit(fn, warmup=5, min_time=2.0, min_iters=10):
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_iters or time.perf_counter() - start < min_time:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


def train_step(name, batch=64):
    model = MODELS[name]()
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(batch, 1, 28, 28)
    y = torch.randint(0, 10, (batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        logits, aux = model(x)
        loss = F.cross_entropy(logits, y)
        if aux is not None:
            loss = loss + 0.3 * F.cross_entropy(aux, y)
        loss.backward()
        opt.step()

    return timeit(step)


def inference(name, batch):
    model = MODELS[name]()
    model.eval()
    x = torch.rand(batch, 1, 28, 28)
    with torch.inference_mode():
        return timeit(lambda: model(x))


def layer(spec, batch=64):
    x = torch.rand(batch, spec["c_in"], spec["hw"], spec["hw"], requires_grad=spec["input_grad"])
    if spec["op"] == "conv":
        m = nn.Conv2d(spec["c_in"], spec["c_out"], spec["k"], spec["stride"], spec["pad"],
                      groups=spec["groups"], bias=spec["bias"])
        f = (lambda t: F.relu(m(t))) if spec["relu"] else m
    elif spec["op"] == "maxpool":
        f = lambda t: F.max_pool2d(t, spec["k"], spec["stride"])
    elif spec["op"] == "bn_relu":
        bn = nn.BatchNorm2d(spec["c_in"])
        bn.train()
        f = lambda t: F.relu(bn(t))
    else:
        raise ValueError(spec["op"])
    if spec["op"] == "maxpool":
        x.requires_grad_(True)
    r = torch.ones_like(f(x))

    def fwd_bwd():
        y = f(x)
        y.backward(r)

    return timeit(fwd_bwd, min_time=1.0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", help="write the results to this file")
    args = ap.parse_args()
    spec = json.load(open(os.path.join(HERE, "layers.json")))
    results = {}
    for name in MODELS:
        t = train_step(name)
        results[f"train_step/{name}/b64"] = {"seconds": t, "images_per_second": 64 / t}
        for b in (1, 64, 256):
            t = inference(name, b)
            results[f"inference/{name}/f32/b{b}"] = {"seconds": t, "images_per_second": b / t}
    for s in spec["layers"]:
        t = layer(s)
        results[f"layer/{s['id']}/b64"] = {"seconds": t}
    width = max(len(k) for k in results)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for k, v in results.items():
        ips = f"{v['images_per_second']:>12,.0f} img/s" if "images_per_second" in v else ""
        print(f"{k:<{width}}  {v['seconds'] * 1e3:>10.3f} ms  {ips}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(), "results": results}, fh, indent=1)


if __name__ == "__main__":
    main()
