"""Recipes and presets by name, in one table each: train.py's network architectures and
preconditioners (EDM's configurations, as plain dicts), and the recipes of the quick start and the D
study (train.py options)."""

#----------------------------------------------------------------------------
# EDM's train.py configurations.

ARCHITECTURES = {
    'ddpmpp': dict(model_type='SongUNet', embedding_type='positional', encoder_type='standard', decoder_type='standard',
                   channel_mult_noise=1, resample_filter=[1, 1], model_channels=128, channel_mult=[2, 2, 2]),
    'ncsnpp': dict(model_type='SongUNet', embedding_type='fourier', encoder_type='residual', decoder_type='standard',
                   channel_mult_noise=2, resample_filter=[1, 3, 3, 1], model_channels=128, channel_mult=[2, 2, 2]),
    'adm':    dict(model_type='DhariwalUNet', model_channels=192, channel_mult=[1, 2, 3, 4]),
}
PRECONDITIONERS = {
    'vp':  ('training.networks.VPPrecond', 'training.loss.VPLoss'),
    've':  ('training.networks.VEPrecond', 'training.loss.VELoss'),
    'edm': ('training.networks.EDMPrecond', 'training.loss.EDMLoss'),
}

#----------------------------------------------------------------------------
# Recipes: train.py options beyond --outdir, --name, --data, --device, --duration, --tick and --resume.
# 'quickstart', the demo's (quickstart.py; the D study's for 16x16 data):
# a DDPM++ with 16 channels at 16x16 and 32 at 8x8 and 4x4, 2 residual blocks per resolution (0.43M
# parameters; EDM's CIFAR-10 model has 56M), a high learning rate with a 1 kimg warm-up and a 2 kimg EMA
# half-life, because the whole run is only 35 kimg (~550 steps). 2 blocks rather than DDPM++'s 4 train
# at 1.6x the speed and make the better model in equal time (the D study's finding): on 2 CPU cores,
# 45 kimg with 2 blocks (417 s) scored FD-digits 14.8 and 83% recognised, 30 kimg with 4 blocks (415 s)
# 24.7 and 76%. Shipped, 35 kimg (285 to 306 s of training): FD-digits 22.6 +- 1.9, 80% recognised
# (3 training seeds, 100 samples each; docs/quickstart.md).
RECIPES = {
    'quickstart': dict(
        cond=1, arch='ddpmpp', precond='edm', D=128.0,
        cbase=16, cres='1,2,2', batch=64, lr=2e-3, lr_rampup=1, ema=0.002, ema_rampup=0.05,
        nblock=2, dropout=0, augment=0, snap=4, dump=4, workers=0),
    # 'cifar10': train.py's defaults, EDM's unconditional CIFAR-10 recipe with DDPM++ (the D study's for
    # 32x32 data; the paper's 1.91 used NCSN++, --arch=ncsnpp).
    'cifar10': dict(cond=0, arch='ddpmpp', precond='edm', batch=512, lr=1e-3, ema=0.5, dropout=0.13, augment=0.12),
}

#----------------------------------------------------------------------------
