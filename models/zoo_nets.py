"""Architectures of the model zoo (see :mod:`models.zoo` for the registry, seeding and export).

Each class keeps the structure that makes its real counterpart hard to cut, at a size that
exports and runs in a second: ResNet basic/bottleneck blocks with identity and 1x1-conv
shortcuts, VGG, MobileNetV2 inverted residuals (depthwise, ReLU6), MobileNetV3 (SE with
hard-sigmoid gating, hard-swish, depthwise 5x5), YOLOv8-style C2f/SPPF with a Resize+Concat
neck, UNet (ConvTranspose, skip Concat), MTCNN's ONet (valid convs, PReLU, ceil-mode pools,
permute+Flatten before Linear) and Conv1d / Conv3d stacks.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

def conv_bn(cin: int, cout: int, k: int, s: int = 1, g: int = 1, act: Callable[[], nn.Module] | None = nn.ReLU,
            dims: int = 2) -> nn.Sequential:
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
    bn = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims]
    layers: list[nn.Module] = [conv(cin, cout, k, s, k // 2, groups=g, bias=False), bn(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv_bn(cin, planes, 3, stride)
        self.conv2 = conv_bn(planes, planes, 3, act=None)
        self.short = (nn.Identity() if stride == 1 and cin == planes
                      else conv_bn(cin, planes, 1, stride, act=None))

    def forward(self, x):
        return F.relu(self.conv2(self.conv1(x)) + self.short(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        cout = planes * self.expansion
        self.body = nn.Sequential(conv_bn(cin, planes, 1), conv_bn(planes, planes, 3, stride),
                                  conv_bn(planes, cout, 1, act=None))
        self.short = (nn.Identity() if stride == 1 and cin == cout
                      else conv_bn(cin, cout, 1, stride, act=None))

    def forward(self, x):
        return F.relu(self.body(x) + self.short(x))


class ResNet(nn.Module):
    """CIFAR-style stem (3x3 conv) or ImageNet stem (7x7/2 conv + 3x3/2 maxpool)."""

    def __init__(self, block, layers, widths, in_ch=3, num_classes=10, imagenet_stem=False):
        super().__init__()
        stem_w = widths[0] if not imagenet_stem else 64
        self.stem = (nn.Sequential(conv_bn(in_ch, stem_w, 7, 2), nn.MaxPool2d(3, 2, 1)) if imagenet_stem
                     else conv_bn(in_ch, stem_w, 3))
        blocks, cin = [], stem_w
        for i, (n, w) in enumerate(zip(layers, widths)):
            for j in range(n):
                stride = 2 if (j == 0 and i > 0) else 1
                blocks.append(block(cin, w, stride))
                cin = w * block.expansion
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


class VGG(nn.Module):
    def __init__(self, cfg=(16, 16, "M", 32, 32, "M", 64, 64, "M"), in_ch=3, num_classes=10, spatial=4):
        super().__init__()
        layers, cin = [], in_ch
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers.append(conv_bn(cin, v, 3))
                cin = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(cin * spatial * spatial, 64), nn.ReLU(),
                                        nn.Dropout(0.5), nn.Linear(64, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand (ReLU6), depthwise kxk, optional SE, 1x1 project, no act."""

    def __init__(self, cin, cout, stride, expand, k=3, act=nn.ReLU6, se=False):
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn(cin, hidden, 1, act=act))
        layers.append(conv_bn(hidden, hidden, k, stride, g=hidden, act=act))
        if se:
            layers.append(SqueezeExcite(hidden))
        layers.append(conv_bn(hidden, cout, 1, act=None))
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.body(x)
        return x + y if self.residual else y


class SqueezeExcite(nn.Module):
    """MobileNetV3 SE: avg pool, 1x1 reduce + ReLU, 1x1 expand + hard-sigmoid, gating Mul."""

    def __init__(self, ch, reduction=4):
        super().__init__()
        mid = max(8, ch // reduction)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(ch, mid, 1)
        self.fc2 = nn.Conv2d(mid, ch, 1)

    def forward(self, x):
        s = F.hardsigmoid(self.fc2(F.relu(self.fc1(self.pool(x)))))
        return x * s


class MobileNet(nn.Module):
    def __init__(self, cfg, stem=16, last=128, num_classes=10, act=nn.ReLU6):
        super().__init__()
        self.stem = conv_bn(3, stem, 3, act=act)
        blocks, cin = [], stem
        for k, expand, cout, n, stride, se, a in cfg:
            for i in range(n):
                blocks.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand, k, a, se))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = conv_bn(cin, last, 1, act=act)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(last, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.head(self.blocks(self.stem(x)))), 1))


def mobilenet_v2():
    R = nn.ReLU6  # (kernel, expand, out, repeats, stride, se, act)
    return MobileNet([(3, 1, 8, 1, 1, False, R), (3, 6, 16, 2, 2, False, R),
                      (3, 6, 24, 2, 2, False, R), (3, 6, 32, 2, 2, False, R)], stem=16, last=128)


def mobilenet_v3():
    R, H = nn.ReLU, nn.Hardswish
    return MobileNet([(3, 1, 16, 1, 1, True, R), (3, 4, 24, 2, 2, False, R),
                      (5, 3, 32, 2, 2, True, H), (5, 4, 48, 1, 1, True, H),
                      (3, 4, 64, 1, 2, False, H)], stem=16, last=160, act=H)


# YOLOv8-style pieces: Conv = conv + BN + SiLU.
def _c(cin, cout, k=1, s=1):
    return conv_bn(cin, cout, k, s, act=nn.SiLU)


class YoloBottleneck(nn.Module):
    def __init__(self, c, shortcut=True):
        super().__init__()
        self.cv1, self.cv2, self.add = _c(c, c, 3), _c(c, c, 3), shortcut

    def forward(self, x):
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """cv1 -> split in two halves; each bottleneck extends the list; Concat all -> cv2."""

    def __init__(self, cin, cout, n=1, shortcut=True):
        super().__init__()
        self.c = cout // 2
        self.cv1 = _c(cin, 2 * self.c)
        self.cv2 = _c((2 + n) * self.c, cout)
        self.m = nn.ModuleList(YoloBottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    def __init__(self, cin, cout, k=5):
        super().__init__()
        self.cv1 = _c(cin, cin // 2)
        self.cv2 = _c(cin // 2 * 4, cout)
        self.pool = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x):
        x = self.cv1(x)
        y1 = self.pool(x)
        y2 = self.pool(y1)
        return self.cv2(torch.cat([x, y1, y2, self.pool(y2)], 1))


class Yolo(nn.Module):
    """Backbone to stride 16, SPPF, FPN/PAN neck with nearest Resize + Concat, two heads."""

    def __init__(self, w=(8, 16, 32, 64), no=14):
        super().__init__()
        self.b0, self.b1 = _c(3, w[0], 3, 2), _c(w[0], w[1], 3, 2)
        self.b2 = C2f(w[1], w[1])
        self.b3, self.b4 = _c(w[1], w[2], 3, 2), C2f(w[2], w[2])
        self.b5, self.b6 = _c(w[2], w[3], 3, 2), C2f(w[3], w[3])
        self.sppf = SPPF(w[3], w[3])
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.n1 = C2f(w[3] + w[2], w[2], shortcut=False)
        self.down = _c(w[2], w[2], 3, 2)
        self.n2 = C2f(w[2] + w[3], w[3], shortcut=False)
        self.h1 = nn.Sequential(_c(w[2], w[2], 3), nn.Conv2d(w[2], no, 1))
        self.h2 = nn.Sequential(_c(w[3], w[3], 3), nn.Conv2d(w[3], no, 1))

    def forward(self, x):
        p3 = self.b4(self.b3(self.b2(self.b1(self.b0(x)))))
        p4 = self.sppf(self.b6(self.b5(p3)))
        n3 = self.n1(torch.cat([self.up(p4), p3], 1))
        n4 = self.n2(torch.cat([self.down(n3), p4], 1))
        return self.h1(n3), self.h2(n4)


class UNet(nn.Module):
    def __init__(self, in_ch=3, n_classes=2, w=(16, 32, 64)):
        super().__init__()

        def double(cin, cout):
            return nn.Sequential(conv_bn(cin, cout, 3), conv_bn(cout, cout, 3))

        self.e1, self.e2, self.mid = double(in_ch, w[0]), double(w[0], w[1]), double(w[1], w[2])
        self.pool = nn.MaxPool2d(2)
        self.up2 = nn.ConvTranspose2d(w[2], w[1], 2, 2)
        self.d2 = double(2 * w[1], w[1])
        self.up1 = nn.ConvTranspose2d(w[1], w[0], 2, 2)
        self.d1 = double(2 * w[0], w[0])
        self.out = nn.Conv2d(w[0], n_classes, 1)

    def forward(self, x):
        e1 = self.e1(x)
        e2 = self.e2(self.pool(e1))
        m = self.mid(self.pool(e2))
        d2 = self.d2(torch.cat([self.up2(m), e2], 1))
        d1 = self.d1(torch.cat([self.up1(d2), e1], 1))
        return self.out(d1)


class ONet(nn.Module):
    """MTCNN's output net (48x48): valid convs, PReLU, ceil-mode max-pools, Caffe-order
    permute(0,3,2,1) + Flatten before the dense layer, three heads (face prob, box, landmarks)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3), nn.PReLU(32), nn.MaxPool2d(3, 2, ceil_mode=True),
            nn.Conv2d(32, 64, 3), nn.PReLU(64), nn.MaxPool2d(3, 2, ceil_mode=True),
            nn.Conv2d(64, 64, 3), nn.PReLU(64), nn.MaxPool2d(2, 2, ceil_mode=True),
            nn.Conv2d(64, 128, 2), nn.PReLU(128))
        self.dense = nn.Linear(128 * 3 * 3, 256)
        self.prelu = nn.PReLU(256)
        self.cls, self.box, self.landmarks = nn.Linear(256, 2), nn.Linear(256, 4), nn.Linear(256, 10)

    def forward(self, x):
        x = self.body(x).permute(0, 3, 2, 1).flatten(1)
        x = self.prelu(self.dense(x))
        return torch.softmax(self.cls(x), 1), self.box(x), self.landmarks(x)


class ConvNd(nn.Module):
    """Conv1d / Conv3d stacks: conv-BN-ReLU, max-pool, global average, Linear."""

    def __init__(self, dims, in_ch, widths, num_classes=10):
        super().__init__()
        pool = {1: nn.MaxPool1d, 3: nn.MaxPool3d}[dims]
        layers, cin = [], in_ch
        for i, w in enumerate(widths):
            layers.append(conv_bn(cin, w, 5 if dims == 1 and i == 0 else 3, dims=dims))
            layers.append(conv_bn(w, w, 3, dims=dims))
            if i < len(widths) - 1:
                layers.append(pool(2))
            cin = w
        self.features = nn.Sequential(*layers)
        self.dims = dims
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.features(x)
        return self.fc(x.mean(dim=tuple(range(2, 2 + self.dims))))
