"""Recipes and presets by name, in one table each: train.py's network architectures and
preconditioners (EDM's and EDM2's configurations, as plain dicts), and the recipes (train.py options)
of the quick start, the D study and EDM2's presets (train.py --preset)."""

#----------------------------------------------------------------------------
# EDM's train.py configurations.

ARCHITECTURES = {
    'ddpmpp': dict(model_type='SongUNet', embedding_type='positional', encoder_type='standard', decoder_type='standard',
                   channel_mult_noise=1, resample_filter=[1, 1], model_channels=128, channel_mult=[2, 2, 2]),
    'ncsnpp': dict(model_type='SongUNet', embedding_type='fourier', encoder_type='residual', decoder_type='standard',
                   channel_mult_noise=2, resample_filter=[1, 3, 3, 1], model_channels=128, channel_mult=[2, 2, 2]),
    'adm':    dict(model_type='DhariwalUNet', model_channels=192, channel_mult=[1, 2, 3, 4]),
    # EDM2's magnitude-preserving U-Net (training/networks_edm2.py) with EDM2's UNet defaults; the size
    # comes from its --preset (cbase), the rest of its recipe too (EDM2_RECIPE).
    'edm2':   dict(model_channels=192, channel_mult=[1, 2, 3, 4], num_blocks=3, attn_resolutions=[16, 8]),
}
PRECONDITIONERS = {
    'vp':  ('training.networks.VPPrecond', 'training.loss.VPLoss'),
    've':  ('training.networks.VEPrecond', 'training.loss.VELoss'),
    'edm': ('training.networks.EDMPrecond', 'training.loss.EDMLoss'),
}

# What --arch=edm2 trains with beyond its network kwargs: EDM2's preconditioner (EDM's, with the
# uncertainty head) and loss, Adam with EDM2's betas, EDM2's learning-rate schedule, and its recipe
# when no --preset is given (edm2-img64-s, the smallest pixel-space model EDM2 published an FID for).
EDM2_RECIPE = dict(
    network_class='training.networks_edm2.EDM2Precond', loss_class='training.loss.EDM2Loss',
    optimizer_kwargs=dict(class_name='torch.optim.Adam', betas=[0.9, 0.99], eps=1e-8),
    lr_func='training.training_loop.learning_rate_schedule', default_preset='edm2-img64-s')

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


def edm2_preset(channels: int, lr: float, decay: float, dropout: float, duration_Mi: int, img64: bool) -> dict:
    """One of EDM2's train_edm2.py presets as train.py options: batch 2048, the duration in Mimg
    (EDM2's in units of 2^20 images), its learning rate alpha_ref (--lr) and decay t_ref in batches
    (--decay), its lognormal sigma (P_mean, P_std: -0.8, 1.6 for ImageNet-64, -0.4, 1.0 for the latent
    ImageNet-512), no augmentation (its network takes no augmentation labels) and EDM2's two
    power-function EMAs (std 0.05 and 0.10)."""
    P_mean, P_std = (-0.8, 1.6) if img64 else (-0.4, 1.0)
    return dict(arch='edm2', cbase=channels, batch=2048, duration=(duration_Mi << 20) / 1e6, lr=lr, decay=decay,
                dropout=dropout, P_mean=P_mean, P_std=P_std, augment=0, phema='0.05,0.10')


# EDM2's presets (train_edm2.py), by EDM2's names. The img512 ones are EDM2's latent-space recipe (it trains
# on 64x64x4 VAE latents of ImageNet-512); here they train on the pixels they are given, as any preset does.
RECIPES.update({
    'edm2-img512-xxs': edm2_preset(64,  0.0170, 70000, 0.00, 2048, img64=False),
    'edm2-img512-xs':  edm2_preset(128, 0.0120, 70000, 0.00, 2048, img64=False),
    'edm2-img512-s':   edm2_preset(192, 0.0100, 70000, 0.00, 2048, img64=False),
    'edm2-img512-m':   edm2_preset(256, 0.0090, 70000, 0.10, 2048, img64=False),
    'edm2-img512-l':   edm2_preset(320, 0.0080, 70000, 0.10, 1792, img64=False),
    'edm2-img512-xl':  edm2_preset(384, 0.0070, 70000, 0.10, 1280, img64=False),
    'edm2-img512-xxl': edm2_preset(448, 0.0065, 70000, 0.10, 896,  img64=False),
    'edm2-img64-xs':   edm2_preset(128, 0.0120, 35000, 0.00, 1024, img64=True),
    'edm2-img64-s':    edm2_preset(192, 0.0100, 35000, 0.00, 1024, img64=True),
    'edm2-img64-m':    edm2_preset(256, 0.0090, 35000, 0.10, 2048, img64=True),
    'edm2-img64-l':    edm2_preset(320, 0.0080, 35000, 0.10, 1024, img64=True),
    'edm2-img64-xl':   edm2_preset(384, 0.0070, 35000, 0.10, 640,  img64=True),
})
EDM2_PRESETS = tuple(name for name, recipe in RECIPES.items() if recipe.get('arch') == 'edm2')  # train.py --preset's choices.

#----------------------------------------------------------------------------
