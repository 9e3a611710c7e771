"""Built-in plugins: one module per method or baseline, and one registration module per
task (``tasks/``), dataset (``datasets/``), model family (``models/``) and evaluation attack
(``attacks/``); and two plugin packages, each a product of its own that adds its own
registration hook, command, and what they use: ``oversampling/`` (``robx oversample``, GL-GAN)
and ``crowd/`` (``robx crowd``, ICED).

:data:`DEFAULT_PLUGINS` lists them for :func:`robx.core.discovery.available_plugins` (the
plugins package names its own members, so the core names no method, task, dataset or
model). They import only from ``robx``, as a third-party plugin does, and helpers that
several plugins share from :mod:`robx.plugins.common`, which is not a plugin; no plugin
imports another plugin (a package's modules import their own package). A method that is a
composition is a recipe (``parts`` and ``routes``, as ``srat`` and ``imbmix``), not a second
implementation.
"""

DEFAULT_PLUGINS: tuple[str, ...] = (
    "robx.plugins.natural:Natural",
    "robx.plugins.pgd:PGD",
    "robx.plugins.trades:TRADES",
    "robx.plugins.mart:MART",
    "robx.plugins.fgsm:FGSM",
    "robx.plugins.nfgsm:NFGSM",
    "robx.plugins.gradalign:GradAlign",
    "robx.plugins.free:Free",
    "robx.plugins.focal:Focal",
    "robx.plugins.ldam:LDAM",
    "robx.plugins.balanced_softmax:BalancedSoftmax",
    "robx.plugins.cb:ClassBalanced",
    "robx.plugins.drw:DeferredReweighting",
    "robx.plugins.resample:Resample",
    "robx.plugins.mixup:Mixup",
    "robx.plugins.remix:Remix",
    "robx.plugins.swa:SWA",
    "robx.plugins.ema:EMA",
    "robx.plugins.separation:Separation",
    "robx.plugins.copies:Copies",
    "robx.plugins.srat:SRAT",
    "robx.plugins.imbmix:ImbMix",
    "robx.plugins.dafa:DAFA",
    "robx.plugins.fairtat:FairTAT",
    "robx.plugins.cfa:CFA",
    "robx.plugins.topk:TopK",
    "robx.plugins.mingre:MinGRE",
    "robx.plugins.oversampling.glgan:GLGANPlugin",
    # registrations: selected with --dataset / --model, not --plugins
    "robx.plugins.tasks.classification",
    "robx.plugins.tasks.regression",
    "robx.plugins.tasks.crime",
    "robx.plugins.datasets.digits",
    "robx.plugins.datasets.cifar",
    "robx.plugins.datasets.synthetic",
    "robx.plugins.datasets.city_crime",
    "robx.plugins.datasets.breast_cancer",
    "robx.plugins.datasets.madelon",
    "robx.plugins.datasets.user_files",
    "robx.plugins.models.cnn",
    "robx.plugins.models.resnet",
    "robx.plugins.models.mlp",
    "robx.plugins.models.stgnn",
    "robx.plugins.models.external",
    "robx.plugins.attacks.pgd",
    "robx.plugins.attacks.cw",
    "robx.plugins.attacks.autoattack",
    "robx.plugins.attacks.stpgd",
    "robx.plugins.loggers.csv_file",
    "robx.plugins.loggers.tensorboard_events",
    # plugin packages: each adds its own registration hook (add_hookspecs), then what uses it
    "robx.plugins.oversampling",
    "robx.plugins.oversampling.samplers",
    "robx.plugins.oversampling.command",
    "robx.plugins.crowd",
    "robx.plugins.crowd.task",
    "robx.plugins.crowd.datasets",
    "robx.plugins.crowd.baselines",
    "robx.plugins.crowd.iced",
    "robx.plugins.crowd.command",
)
