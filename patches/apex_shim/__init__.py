"""The code behind portkit's apex shim (see portkit.patches.apex for how it is installed).

Each module here implements, with apex's names and signatures, a part of NVIDIA apex or
of the compiled extensions apex-using code imports, backed by portkit.ops:

    normalization.py   apex.normalization(.fused_layer_norm), apex.contrib.layer_norm.layer_norm
    optimizers.py      apex.optimizers: FusedAdam, FusedSGD
    multi_tensor.py    apex.multi_tensor_apply.multi_tensor_applier and amp_C
    kernels.py         fused_layer_norm_cuda, fused_mix_prec_layer_norm_cuda,
                       scaled_masked_softmax_cuda, scaled_upper_triang_masked_softmax_cuda,
                       scaled_softmax_cuda, fused_weight_gradient_mlp_cuda
"""
