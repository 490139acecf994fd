#!/usr/bin/env python3
"""CPU training-throughput reference: OKDDip's CIFAR ResNet-32 train step in PyTorch (not part of mbde_jax).

The figure the README's Performance table compares mbde_jax's train step against. Written for this project
(not copied) to perform the same computation as DefangChen/OKDDip
(models/model_cifar/resnet_GL.py + train_GL.py + utils.KL_Loss), CIFAR-100 setting:

  shared trunk : conv3x3(3->16)+BN+ReLU, stage1 (5 basic blocks, 16ch), stage2 (5 blocks, 32ch, stride 2)
  4 branches   : stage3 (5 blocks, 64ch, stride 2) + global avg pool + Linear(64->100)
                 branches 0..2 = peers, branch 3 = leader (group leader / student)
  attention    : shared query/key Linear(64->8, no bias) on pooled peer features;
                 A = softmax_j(q_i . k_j) over peers; target_i = sum_j A_ij * logits_j
  loss         : sum_i CE(peer_i) + CE(leader)
                 + alpha * w * ( sum_i KL_T(peer_i || target_i) + KL_T(leader || mean_i peer_i) )
                 KL_T(s||t) = T^2 * KLDiv_batchmean(log_softmax(s/T), softmax(t/T) + 1e-7), T = 3
                 Targets are NOT detached (as in the reference train_GL.py); use --detach_targets to change.
  optimizer    : SGD lr 0.1, momentum 0.9, nesterov, weight decay 5e-4

Usage (PyTorch is not a dependency of mbde_jax; install it in a separate virtual environment):
  python3 -m venv /tmp/torch_venv && /tmp/torch_venv/bin/pip install torch numpy
  /tmp/torch_venv/bin/python benchmarks/okddip_torch_reference.py [--steps 15] [--batch 128] [--threads 2]
                                                                   [--channels_last]
"""
import argparse
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    """CIFAR ResNet basic block (two 3x3 convs); 1x1 conv + BN projection shortcut when shape changes."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.proj = None
        if stride != 1 or cin != cout:
            self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.b1(self.c1(x)), inplace=True)
        y = self.b2(self.c2(y))
        sc = x if self.proj is None else self.proj(x)
        return F.relu(y + sc, inplace=True)


def stage(cin, cout, n, stride):
    return nn.Sequential(*[Block(cin if i == 0 else cout, cout, stride if i == 0 else 1) for i in range(n)])


class Branch(nn.Module):
    def __init__(self, n, num_classes):
        super().__init__()
        self.body = stage(32, 64, n, 2)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        feat = self.body(x).mean(dim=(2, 3))  # global average pool -> B x 64
        return feat, self.fc(feat)


class OKDDipResNet32(nn.Module):
    def __init__(self, num_classes=100, num_peers=3, n=5, att_dim=8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
        self.stage1 = stage(16, 16, n, 1)
        self.stage2 = stage(16, 32, n, 2)
        self.peers = nn.ModuleList([Branch(n, num_classes) for _ in range(num_peers)])
        self.leader = Branch(n, num_classes)
        self.query = nn.Linear(64, att_dim, bias=False)
        self.key = nn.Linear(64, att_dim, bias=False)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        h = self.stage2(self.stage1(self.stem(x)))
        feats, logits = zip(*[p(h) for p in self.peers])
        feats = torch.stack(feats, 1)            # B x P x 64
        logits = torch.stack(logits, 1)          # B x P x C
        q = self.query(feats)                    # B x P x 8
        k = self.key(feats)                      # B x P x 8
        att = torch.softmax(q @ k.transpose(1, 2), dim=-1)   # B x P x P  (row i: weights of peer i over peers j)
        targets = att @ logits                   # B x P x C  (per-peer ensemble target)
        _, leader_logits = self.leader(h)        # B x C
        return logits, targets, leader_logits


def kl_T(student, teacher, T):
    logp = F.log_softmax(student / T, dim=1)
    pt = F.softmax(teacher / T, dim=1) + 1e-7
    return T * T * F.kl_div(logp, pt, reduction="batchmean")


def okddip_loss(logits, targets, leader, y, T=3.0, alpha=1.0, w=1.0, detach=False):
    P = logits.shape[1]
    ens = logits.mean(dim=1)
    if detach:
        targets, ens = targets.detach(), ens.detach()
    ce = sum(F.cross_entropy(logits[:, i], y) for i in range(P)) + F.cross_entropy(leader, y)
    kd = sum(kl_T(logits[:, i], targets[:, i], T) for i in range(P)) + kl_T(leader, ens, T)
    return ce + alpha * w * kd


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--channels_last", action="store_true")
    ap.add_argument("--detach_targets", action="store_true")
    ap.add_argument("--consistency_weight", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    model = OKDDipResNet32(num_classes=100)
    n_all = sum(p.numel() for p in model.parameters())
    n_att = sum(p.numel() for m in (model.query, model.key) for p in m.parameters())
    print(f"torch {torch.__version__} | threads {torch.get_num_threads()} | interop {torch.get_num_interop_threads()}")
    print(f"params: {n_all - n_att:,} without attention heads, {n_all:,} total (attention +{n_att:,})")

    mf = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=mf)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)

    x = torch.randn(args.batch, 3, 32, 32).contiguous(memory_format=mf)
    y = torch.randint(0, 100, (args.batch,))

    def step():
        logits, targets, leader = model(x)
        loss = okddip_loss(logits, targets, leader, y, T=3.0, alpha=1.0,
                           w=args.consistency_weight, detach=args.detach_targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    for i in range(args.warmup):
        t0 = time.perf_counter()
        l = step()
        print(f"warmup {i}: {1e3 * (time.perf_counter() - t0):.1f} ms  loss {l:.4f}")

    times = []
    for i in range(args.steps):
        t0 = time.perf_counter()
        l = step()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(f"config: batch {args.batch}, channels_last={args.channels_last}, detach_targets={args.detach_targets}, "
          f"steps {args.steps} (after {args.warmup} warm-up), last loss {l:.4f}")
    print(f"median {1e3 * med:.1f} ms/step  (min {1e3 * min(times):.1f}, max {1e3 * max(times):.1f})")
    print(f"throughput: {args.batch / med:.1f} images/s (median)")


if __name__ == "__main__":
    main()
