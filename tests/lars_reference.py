"""FRA's LARS step (``utils/LARS.py`` of zaczgao/Facial_Region_Awareness, from BYOL-PyTorch's ``LARSSGD``) and
its parameter groups (``main.py collect_params``), written out from their description for the tests."""

FRA_EXCLUDED = ("bn", "downsample.1", "bias")


def fra_excluded_by_name(name: str) -> bool:
    """``collect_params(exclude_bias_and_bn=True)``: no weight decay and no trust ratio for these names."""
    return any(part in name for part in FRA_EXCLUDED)


def reference_lars(w0, grads, lrs, wd, momentum, exclude, eta=1e-3, eps=1e-8):
    """One tensor through FRA's LARS in float64 with Python norms (its ``.item()`` calls):
    ``local_lr = eta |w| / (|g| + wd |w| + eps)`` (1 when excluded), ``d = (g + wd w) * local_lr * lr``,
    ``buf = m buf + d`` (``buf = d`` at first), ``w -= buf``."""
    w, buf = w0.double().clone(), None
    for g, lr in zip(grads, lrs, strict=True):
        g = g.double()
        local = 1.0 if exclude else eta * w.norm().item() / (g.norm().item() + wd * w.norm().item() + eps)
        d = (g + wd * w) * (local * lr)
        buf = d.clone() if buf is None else buf * momentum + d
        w = w - buf
    return w
