"""Where a train step's time goes, unit by unit: every conv-BN-ReLU unit of a variant, forward + backward
in train mode, ours (jitted, the trainer's compiler options) beside the same layer in PyTorch (NCHW,
`Conv2d` + `BatchNorm2d` + ReLU), each also timed as the convolution alone. XLA's profiler does not
attribute a CPU step's time reliably (the convolutions' worker threads are missing from its trace), so
this times the units one at a time instead; BENCHMARKS.md quotes its output. With --pools it times
every max pool instead (forward + backward), beside PyTorch's `max_pool2d`.

    .venv/bin/python scripts/profile_units.py --model inception_v3 [--batch-size 8] [--image-size 299] [--pools]

Prints one row per distinct unit (input shape, width, kernel, stride, how many the network has) in
milliseconds, medians of --repeats, and the totals weighted by the counts. Needs the test extra (torch).
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time


def _median_ms(fn, repeats):
    fn()
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _time_forward_backward(forward, args, cotangent, options, repeats):
    """ms for the output and every argument's gradient, as PyTorch's `y = f(x); y.backward(cotangent)`
    computes: the gradient of `vdot(f(x), cotangent)` alone would let XLA drop a linear layer's forward
    pass. The cotangent is an argument: a constant would let XLA fold the sums over it into the program."""
    import jax

    def forward_backward(args, cotangent):
        y, vjp = jax.vjp(forward, *args)
        return y, vjp(cotangent)

    step = jax.jit(forward_backward, compiler_options=options)
    return _median_ms(lambda: jax.block_until_ready(step(args, cotangent)), repeats)


def _require_torch_padding(what, padding, padding_mode, torch_op):
    if isinstance(padding, str) or padding_mode != "torch":
        raise SystemExit(
            f"profile_units: a {what} pads TF-style ({padding!r}, padding_mode={padding_mode!r}), "
            f"which PyTorch's {torch_op} cannot mirror; profile the variant with padding_mode='torch'"
        )


def _units(model, batch, size):
    """{(input shape, ConvBN fields): count} for the train-mode forward pass."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from inception_jax.models import layers

    found = collections.Counter()

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, layers.ConvBN) and context.method_name == "__call__":
            m = context.module
            fields = (
                m.features,
                layers.pair(m.kernel_size),
                layers.pair(m.strides),
                m.padding,
                m.padding_mode,
                m.use_bn,
            )
            found[(tuple(args[0].shape), fields)] += 1
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((batch, size, size, 3)), train=True))
    return found


def _pools(model, batch, size):
    """{(input shape, window, strides, padding, ceil_mode, padding_mode): count} over the forward pass."""
    import jax
    import jax.numpy as jnp

    from inception_jax.models import layers

    found = collections.Counter()
    max_pool = layers.max_pool

    def record(x, window, strides, padding=0, *, ceil_mode=False, padding_mode="torch"):
        found[(tuple(x.shape), layers.pair(window), layers.pair(strides), padding, ceil_mode, padding_mode)] += 1
        return max_pool(x, window, strides, padding, ceil_mode=ceil_mode, padding_mode=padding_mode)

    layers.max_pool = record  # the models call it through the module, when traced
    try:
        jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((batch, size, size, 3)), train=True))
    finally:
        layers.max_pool = max_pool
    return found


def _time_pool(fields, options, repeats):
    """Ours and PyTorch's, forward + backward, in ms."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    from inception_jax.models import layers

    shape, window, strides, padding, ceil_mode, padding_mode = fields
    _require_torch_padding("pool", padding, padding_mode, "max_pool2d")
    pool = lambda x: layers.max_pool(x, window, strides, padding, ceil_mode=ceil_mode)
    x = jnp.asarray(np.random.default_rng(0).standard_normal(shape, np.float32))
    cotangent = jnp.asarray(np.random.default_rng(1).standard_normal(jax.eval_shape(pool, x).shape, np.float32))
    ours = _time_forward_backward(pool, (x,), cotangent, options, repeats)
    x_nchw = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy()).requires_grad_()
    pads = layers.pair(padding)
    ref_pool = lambda: torch.nn.functional.max_pool2d(x_nchw, window, strides, pads, ceil_mode=ceil_mode)
    ref_cotangent = torch.from_numpy(np.asarray(cotangent).transpose(0, 3, 1, 2).copy())
    return ours, _median_ms(lambda: ref_pool().backward(ref_cotangent), repeats)


def _profile_pools(args, model, size, options):
    totals = collections.Counter()
    print(f"{args.model}, batch {args.batch_size}, {size} px: max pools, forward + backward ms")
    for fields, count in sorted(_pools(model, args.batch_size, size).items(), key=lambda kv: -kv[0][0][1]):
        ours, ref = _time_pool(fields, options, args.repeats)
        totals["ours"] += ours * count
        totals["ref"] += ref * count
        shape, window, strides = fields[:3]
        print(
            f"{str(shape):20s} {window[0]}x{window[1]}/{strides[0]} x{count:<3d} ours {ours:7.1f}   "
            f"PyTorch {ref:7.1f}   PyTorch/ours {ref / ours:.2f}",
            flush=True,
        )
    print(f"total (x count): ours {totals['ours']:.0f} ms, PyTorch {totals['ref']:.0f} ms")


def _time_ours(shape, fields, options, repeats):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from inception_jax.models import layers

    features, kernel, strides, padding, padding_mode, use_bn = fields
    x = jnp.asarray(np.random.default_rng(0).standard_normal(shape, np.float32))
    result = []
    for unit in (
        layers.ConvBN(features, kernel, strides, padding, padding_mode, use_bn=use_bn),
        layers.ConvBN(features, kernel, strides, padding, padding_mode, use_bn=False, act=False),
    ):
        variables = unit.init(jax.random.key(0), x, train=True)
        out = jax.eval_shape(lambda v, unit=unit: unit.apply(v, x, train=True, mutable=["batch_stats"])[0], variables)
        cotangent = jnp.asarray(np.random.default_rng(1).standard_normal(out.shape, np.float32))

        def forward(params, x, unit=unit, variables=variables):
            return unit.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])[0]

        result.append(_time_forward_backward(forward, (variables["params"], x), cotangent, options, repeats))
    return result


def _time_torch(shape, fields, repeats):
    import torch

    features, kernel, strides, padding, padding_mode, use_bn = fields
    _require_torch_padding("unit", padding, padding_mode, "Conv2d")
    n, h, w, c = shape
    conv = torch.nn.Conv2d(c, features, kernel, strides, padding, bias=not use_bn)
    norm = torch.nn.BatchNorm2d(features, eps=1e-3) if use_bn else torch.nn.Identity()
    x = torch.randn(n, c, h, w, requires_grad=True)
    cotangent = torch.randn_like(conv(x))
    whole = lambda: torch.relu(norm(conv(x))).backward(cotangent)
    conv_only = lambda: conv(x).backward(cotangent)
    return _median_ms(whole, repeats), _median_ms(conv_only, repeats)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="inception_v3")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=None, help="default: the variant's input size")
    parser.add_argument("--threads", type=int, default=2, help="PyTorch's thread count (XLA uses every core)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pools", action="store_true", help="time the max pools instead of the conv units")
    args = parser.parse_args(argv)

    import jax
    import torch  # before TensorFlow could be imported (README: "When things go wrong")

    from inception_jax import kernels
    from inception_jax.models import registry

    torch.set_num_threads(args.threads)
    size = args.image_size or registry.data_config(args.model).input_size
    model = registry.create_model(args.model, num_classes=1000)
    options = kernels.compiler_options(jax.devices())
    if args.pools:
        return _profile_pools(args, model, size, options)
    totals = collections.Counter()
    print(
        f"{args.model}, batch {args.batch_size}, {size} px: forward + backward ms per unit "
        "(ours: unit / conv alone; PyTorch: unit / conv alone)"
    )
    units = _units(model, args.batch_size, size)
    for (shape, fields), count in sorted(units.items(), key=lambda kv: -kv[0][0][1] * kv[0][0][2] * kv[0][0][3]):
        ours, ours_conv = _time_ours(shape, fields, options, args.repeats)
        ref, ref_conv = _time_torch(shape, fields, args.repeats)
        for key, value in (("ours", ours), ("ours_conv", ours_conv), ("ref", ref), ("ref_conv", ref_conv)):
            totals[key] += value * count
        features, kernel, strides = fields[:3]
        print(
            f"{str(shape):20s} -> {features:4d} {kernel[0]}x{kernel[1]}/{strides[0]} x{count:<3d} "
            f"ours {ours:7.1f} / {ours_conv:7.1f}   PyTorch {ref:7.1f} / {ref_conv:7.1f}   "
            f"PyTorch/ours {ref / ours:.2f}",
            flush=True,
        )
    print(
        f"total (x count): ours {totals['ours']:.0f} ms, of which convolutions {totals['ours_conv']:.0f}; "
        f"PyTorch {totals['ref']:.0f} ms, of which convolutions {totals['ref_conv']:.0f}"
    )


if __name__ == "__main__":
    main()
