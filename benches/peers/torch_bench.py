"""PyTorch reference for hdr's benchmarks: the same architectures, layer for layer, the same shapes.

Measures, with 2 threads on the CPU:
  train_step/<model>/b64      forward + backward + Adam step (auxiliary loss included)
  inference/<model>/f32/b{1,64,256}
  layer/<id>/b64              forward + backward of each layer in layers.json

Run (torch in a virtualenv outside the repo; not part of CI):
  python3 -m venv /tmp/torch && /tmp/torch/bin/pip install torch numpy
  /tmp/torch/bin/python benches/peers/torch_bench.py [--json out.json] [--models a,b] [--train-only]
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


class Mlp3(nn.Module):
    """hdr_models::MlpConfig::three_hidden(): 784-800-800-800-10, ReLU, dropout 0.2 after each
    hidden layer (training only), 1,917,610 parameters."""

    def __init__(self, hidden=(800, 800, 800), p=0.2):
        super().__init__()
        widths = (784,) + tuple(hidden)
        self.fcs = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:]))
        self.drop = nn.Dropout(p)
        self.head = nn.Linear(widths[-1], 10)

    def forward(self, x):
        x = x.flatten(1)
        for fc in self.fcs:
            x = self.drop(F.relu(fc(x)))
        return self.head(x), None


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


def conv_bn(c_in, c_out, k, stride, groups=1, relu=True):
    layers = [nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False),
              nn.BatchNorm2d(c_out)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """conv3x3/stride + BN + ReLU, conv3x3 + BN; identity shortcut, or 1x1/stride conv + BN
    when the shape changes; ReLU after the sum."""

    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = conv_bn(c_in, c_out, 3, stride)
        self.conv2 = conv_bn(c_out, c_out, 3, 1, relu=False)
        self.shortcut = (conv_bn(c_in, c_out, 1, stride, relu=False)
                         if stride != 1 or c_in != c_out else None)

    def forward(self, x):
        s = x if self.shortcut is None else self.shortcut(x)
        return F.relu(self.conv2(self.conv1(x)) + s)


class ResNet(nn.Module):
    """hdr_models::ResNetConfig::default(): 3x3 stem of 16 + BN + ReLU, stages of 2 basic blocks
    at 16 (stride 1), 32 (stride 2), 64 (stride 2) channels, global average pooling, linear head;
    no dropout; 174,970 parameters."""

    def __init__(self, stem=16, stages=((16, 2, 1), (32, 2, 2), (64, 2, 2))):
        super().__init__()
        self.stem = conv_bn(1, stem, 3, 1)
        blocks, c = [], stem
        for channels, n, stride in stages:
            for b in range(n):
                blocks.append(BasicBlock(c, channels, stride if b == 0 else 1))
                c = channels
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c, 10)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.head(x.mean((2, 3))), None


class DenseLayer(nn.Module):
    """DenseNet-BC layer: BN-ReLU-conv1x1 (bottleneck * growth), BN-ReLU-conv3x3 (growth),
    concatenated after the input; convolutions without bias."""

    def __init__(self, c_in, growth, bottleneck):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, bottleneck * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(bottleneck * growth)
        self.conv2 = nn.Conv2d(bottleneck * growth, growth, 3, padding=1, bias=False)

    def forward(self, x):
        h = self.conv1(F.relu(self.bn1(x)))
        h = self.conv2(F.relu(self.bn2(h)))
        return torch.cat([x, h], 1)


class DenseNet(nn.Module):
    """hdr_models::DenseNetConfig::default(): DenseNet-BC, growth 12, bottleneck 4, blocks 6-6-6,
    compression 0.5: 3x3 stem conv of 24 (no bias, no BN), 2x2 average pool (28 -> 14), dense
    blocks at 14x14, 7x7, 3x3 with transitions BN-ReLU-conv1x1-avgpool2x2 between them, final
    BN + ReLU, global average pooling, linear head; no dropout; 175,690 parameters."""

    def __init__(self, growth=12, blocks=(6, 6, 6), bottleneck=4, compression=0.5):
        super().__init__()
        c = 2 * growth
        self.stem = nn.Conv2d(1, c, 3, padding=1, bias=False)
        stages = []
        for i, n in enumerate(blocks):
            layers = []
            for _ in range(n):
                layers.append(DenseLayer(c, growth, bottleneck))
                c += growth
            if i + 1 < len(blocks):
                out = max(1, int(c * compression))
                layers += [nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                           nn.Conv2d(c, out, 1, bias=False), nn.AvgPool2d(2, 2)]
                c = out
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.final_bn = nn.BatchNorm2d(c)
        self.head = nn.Linear(c, 10)

    def forward(self, x):
        x = self.stages(F.avg_pool2d(self.stem(x), 2, 2))
        x = F.relu(self.final_bn(x))
        return self.head(x.mean((2, 3))), None


class MobileNet(nn.Module):
    """hdr_models::MobileNetConfig::default(): MobileNet v1 as published, width 1.0: grey input
    replicated to 3 channels, 3x3 stride-2 stem of 32 + BN + ReLU, the 13 separable blocks of
    Table 1 (depthwise 3x3 + BN + ReLU, pointwise 1x1 + BN + ReLU) with their strides (28x28 ->
    1x1), global average pooling, linear head; no dropout; 3,217,226 parameters."""

    def __init__(self, width=1.0):
        super().__init__()
        ch = lambda c: max(1, round(c * width))
        c = ch(32)
        self.stem = conv_bn(3, c, 3, 2)
        blocks = []
        for out, s in V1_BLOCKS:
            blocks.append(nn.Sequential(conv_bn(c, c, 3, s, groups=c), conv_bn(c, ch(out), 1, 1)))
            c = ch(out)
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c, 10)

    def forward(self, x):
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        x = self.blocks(self.stem(x))
        return self.head(x.mean((2, 3))), None


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


MODELS = {"mlp3": Mlp3, "lenet5": LeNet5, "resnet": ResNet, "densenet": DenseNet,
          "mobilenet": MobileNet, "mobilenet_hdr": MobileNetHdr}


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
    ap.add_argument("--models", default=",".join(MODELS),
                    help="comma-separated models (default: all of " + ", ".join(MODELS) + ")")
    ap.add_argument("--train-only", action="store_true",
                    help="only the training steps (no inference, no layers)")
    ap.add_argument("--layers", metavar="SUBSTRING",
                    help="only the layers whose id contains SUBSTRING (no models)")
    args = ap.parse_args()
    names = args.models.split(",")
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(MODELS)}")
    spec = json.load(open(os.path.join(HERE, "layers.json")))
    results = {}
    for name in [] if args.layers else names:
        t = train_step(name)
        results[f"train_step/{name}/b64"] = {"seconds": t, "images_per_second": 64 / t}
        if args.train_only:
            continue
        for b in (1, 64, 256):
            t = inference(name, b)
            results[f"inference/{name}/f32/b{b}"] = {"seconds": t, "images_per_second": b / t}
    for s in [] if args.train_only else spec["layers"]:
        if args.layers and args.layers not in s["id"]:
            continue
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
