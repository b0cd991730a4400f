"""The PyTorch peers (timm, torchvision; eager or `torch.compile`) and torch helpers.

The helpers (threads, device, compiler statistics) are shared with
keras_maxvit on the torch backend (`_keras_runners.py`).
"""

from _common import LEARNING_RATE, NUM_CLASSES, SEED, WEIGHT_DECAY, Runner, Skip, images


def torch_setup(args):
    """Imports torch with the benchmark's thread counts and seed."""
    import torch

    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(args.interop_threads)
    except RuntimeError:  # already set (only possible before any parallel work)
        pass
    torch.manual_seed(SEED)
    return torch


def torch_device(torch, args):
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda but torch.cuda.is_available() is False")
        # As timm's train.py; TF32 float32 matmuls, as JAX and TensorFlow do by default.
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
        return torch.device("cuda")
    return torch.device("cpu")


def torch_info(torch) -> dict:
    return {
        "torch_intra_op": torch.get_num_threads(),
        "torch_inter_op": torch.get_num_interop_threads(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }


def dynamo_stats() -> dict:
    """Graph breaks (and their most frequent reasons) and graphs compiled so far."""
    from torch._dynamo.utils import counters

    reasons = sorted(counters["graph_break"].items(), key=lambda item: -item[1])
    return {
        "graph_breaks": int(sum(counters["graph_break"].values())),
        "unique_graphs": int(counters["stats"].get("unique_graphs", 0)),
        "graph_break_reasons": {str(k)[:300]: int(v) for k, v in reasons[:5]},
    }


def cuda_peak_mib(torch):
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    return None


class TorchRunner(Runner):
    """timm and torchvision: eager or `torch.compile`, autocast for bfloat16.

    The training step is the one of timm's train.py: autocast forward,
    float32 cross-entropy, `backward`, default `torch.optim.AdamW` (foreach on
    CUDA, a per-tensor loop on CPU: what users get).
    """

    def __init__(self, args, build_model):
        super().__init__(args)
        torch = torch_setup(args)
        self.torch = torch
        self.device = torch_device(torch, args)
        self.bf16 = args.dtype == "bfloat16"
        model = build_model().to(self.device)
        self.model = model
        self.compiled = args.compile
        self.forward = (
            torch.compile(model, dynamic=False, mode=args.compile_mode) if args.compile else model
        )
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY
        )
        self.info.update(torch_info(torch))
        self.info["trainable_params"] = sum(
            p.numel() for p in model.parameters() if p.requires_grad
        )
        self.info["compiler"] = (
            f"torch.compile(mode={args.compile_mode!r})" if args.compile else None
        )

    def _autocast(self):
        return self.torch.autocast(
            device_type=self.device.type, dtype=self.torch.bfloat16, enabled=self.bf16
        )

    def inputs(self, batch):
        x, y = images(batch, self.resolution, channels_first=True)
        torch = self.torch
        return torch.from_numpy(x).to(self.device), torch.from_numpy(y).long().to(self.device)

    def set_mode(self, training):
        self.model.train(training)

    def infer(self, x):
        with self.torch.inference_mode(), self._autocast():
            return self.forward(x)

    def train_step(self, x, y):
        torch = self.torch
        with self._autocast():
            logits = self.forward(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss

    def sync(self, out):
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def reset_peak_memory(self):
        if self.device.type == "cuda":
            self.torch.cuda.reset_peak_memory_stats()

    def device_peak_mib(self):
        return cuda_peak_mib(self.torch) if self.device.type == "cuda" else None

    def record_compiler_stats(self):
        if self.compiled:
            self.info.update(dynamo_stats())


def build_timm(args) -> TorchRunner:
    import timm

    # The `_tf_` models are the official architecture (the one keras_maxvit
    # and kecam implement); other resolutions change only the window size.
    name = f"maxvit_{args.variant}_tf_{args.resolution}"
    if name not in timm.list_models("maxvit_*_tf_*"):
        name = f"maxvit_{args.variant}_tf_224"
    kwargs = {} if name.endswith(f"_{args.resolution}") else {"img_size": args.resolution}

    def build():
        return timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES, **kwargs)

    runner = TorchRunner(args, build)
    runner.info["model"] = name + (f" (img_size={args.resolution})" if kwargs else "")
    return runner


def build_torchvision(args) -> TorchRunner:
    if args.variant != "tiny":
        raise Skip("torchvision only has MaxViT-T (maxvit_t)")
    from torchvision.models import maxvit

    if args.resolution == 224:

        def build():
            return maxvit.maxvit_t(weights=None)

        name = "torchvision.models.maxvit_t()"
    else:
        # maxvit_t fixes partition_size=7 (224 only); same configuration with
        # the official window = side / 32.
        def build():
            return maxvit.MaxVit(
                input_size=(args.resolution, args.resolution),
                stem_channels=64,
                partition_size=args.resolution // 32,
                block_channels=[64, 128, 256, 512],
                block_layers=[2, 2, 5, 2],
                head_dim=32,
                stochastic_depth_prob=0.2,
            )

        name = f"torchvision MaxVit, maxvit_t configuration, partition_size={args.resolution // 32}"
    runner = TorchRunner(args, build)
    runner.info["model"] = name
    return runner
