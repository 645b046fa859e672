"""The default configuration: the paper's subject conf, the defaults its code falls back to, and the
keys DynAvatar adds. Every valid key appears here; its default's type is the key's type."""

DEFAULTS_HOCON = """
train {
    exps_folder = ./data/experiments
    methodname = dynavatar
    nepoch = 600                     # epochs to train; the command line's --nepoch wins
    dataset_class = datasets.real_dataset.FaceDataset   # accepted for compatibility; the IMavatar reader is used
    learning_rate = 1.0e-4
    learning_rate_cam = 5.0e-4
    num_pixels = 2048                # accepted for compatibility; Gaussian splatting renders whole images
    max_points_training = 102400     # batch size = min(max_points_training / n_points, max_batch)
    max_batch = 8
    upsample_freq = 1                # prune/grow (and radius) steps happen at epochs divisible by this
    plot_freq = 1
    save_freq = 1
    sched_milestones = [80, 100]
    sched_factor = 0.5
    GT_lbs_milestones = [20, 30, 50, 70]
    GT_lbs_factor = 0.5
    optimize_expression = true
    optimize_camera = true
    optimize_inputs_after_epoch = 10 # per-frame inputs are stepped only in epochs after this one (> 10)
    refine_camera_translation = false # render with a refined per-frame camera translation; the reference
                                     # refines it but renders with the tracked one, as false does
    frames_per_epoch = 0             # 0: an epoch is the whole training set (the paper); N: N frames drawn
                                     # afresh each epoch, so that a schedule in epochs means the same
                                     # number of steps for a short and a long video
    keep_optimizer_state = false     # carry Adam's moments across prune/grow steps once the point count
                                     # has reached its last target; the paper rebuilds the optimizer at
                                     # each (docs/RECIPES.md)
    seed = 0
    device = auto                    # auto | cpu | cuda | cuda:N
    tf32 = false                     # CUDA matrix products in TF32 (faster, 10-bit mantissa); off = full float32
    plot_n_images = 4                # test images logged to TensorBoard per epoch
    max_nonfinite_steps = 3          # a step with a non-finite loss or gradient is skipped; this many in a
                                     # row stop the run (exit code 2), 'latest' kept as the last good state
}
loss {
    rgb_weight = 1.0
    ssim_weight = 0.25
    vgg_feature_weight = 0.1
    vgg_weights_path = ""            # empty: torch hub cache (vgg16-397923af.pth)
    lbs_weight = 10.0
    eikonal_weight = 0.1             # accepted for compatibility (SDF term of PointAvatar; unused here)
    sdf_consistency_weight = 1.0     # accepted for compatibility (unused here)
    flame_distance_chunk = 4096      # points per chunk of the nearest-FLAME-vertex search (256 is
                                     # faster on a CPU, 4096 on a GPU)
}
dataset {
    data_folder = ./data/datasets
    subject_name = subject1
    json_name = flame_params.json
    use_mean_expression = true
    use_var_expression = true
    canonical_pose = 0.4
    use_background = false
    synthetic = false                # generate a synthetic subject into data_folder when it is missing
    synthetic_frames = 30            # frames per video of a generated synthetic subject
    synthetic_seed = 0
    train {
        sub_dir = []
        img_res = [512, 512]
        subsample = 1
        load_images = false
    }
    test {
        sub_dir = []
        img_res = [512, 512]
        subsample = 1
        load_images = false
    }
}
evaluation {
    test_fit_steps = 20              # steps per batch when fitting test-frame inputs (the paper's 20)
    fit_camera_translation = false   # also fit the test frames' camera translation (the reference fits
                                     # expression and pose only; its numbers compare with false)
    lpips_alexnet_path = ""          # empty: torch hub cache (alexnet-owt-7be5be79.pth)
    lpips_lin_path = ""              # empty: weights/v0.1/alex.pth of an installed lpips package
    video_fps = 25.0
    turntable_frames = 48
}
model {
    prune_thresh = 0.1
    rasterizer = auto                # auto | torch | gsplat | inria
    flame_model_path = ./data/FLAME2020/generic_model.pkl   # or "synthetic"
    flame_landmark_path = ./data/FLAME2020/landmark_embedding.npy
    max_scale = 0.025                # scales are sigmoid(.) x max_scale (+ point radius), in FLAME x4 units;
                                     # the paper uses 0.025 for 512 px video and 0.01 for 1024 px
    rotate_gaussians = false         # turn each Gaussian with the rotation of its skinning transform
                                     # (the reference moves Gaussians but never turns them)
    point_colors = false             # a learnt colour offset per Gaussian beside the colour network
    shading = false                  # colour = albedo x a learnt lighting of the posed normal (the
                                     # reference's colours do not change with the head's pose)
    recompute = auto                 # recompute the point networks' activations in the backward pass:
                                     # auto (when the step's estimated activations would not fit in the
                                     # device's free memory) | on (always when training) | off (never)
    recompute_chunk = 20000          # points per recomputed chunk (at most one chunk's activations exist)
    geometry_network {
        d_in = 3
        d_out = 1
        feature_vector_size = 3
        dims = [256, 256, 256, 256, 256, 256, 256]
        geometric_init = true
        bias = 0.6
        skip_in = [3]
        weight_norm = true
        multires = 6
    }
    rendering_network {              # accepted for compatibility (colour comes from geometry_network)
        d_in = 3
        feature_vector_size = 0
        d_out = 3
        dims = [64, 64]
        weight_norm = true
        multires_view = 0
        multires_pnts = 0
    }
    gaussian_network {
        d_in = 3
        feature_vector_size = 0
        d_out = 8
        dims = [64, 64, 64]
        weight_norm = true
        multires_view = 0
        multires_pnts = 0
    }
    deformer_network {
        d_in = 3
        dims = [128, 128, 128, 128]
        weight_norm = true
        multires = 0
        num_exp = 50
        ghostbone = true
        deform_c = true
    }
    point_cloud {
        n_init_points = 400
        max_points = 100000
        init_radius = 0.5
        radius_factor = 0.15
        # Coarse-to-fine schedule: from epoch schedule_epochs[i] on, grow to schedule_points[i]
        # (capped at max_points); the radius is multiplied by radius_factors[i] at that epoch.
        schedule_epochs = [5, 10, 15, 20, 25, 30, 40, 50, 60]
        schedule_points = [800, 1600, 3200, 6400, 10000, 20000, 40000, 80000, 100000]
        radius_factors = [0.75, 0.75, 0.75, 0.75, 0.75, 0.75, 0.75, 0.75, 0.9]
        late_radius_every = 5        # after the last schedule epoch, every this many epochs ...
        late_radius_factor = 0.75    # ... the radius is multiplied by this
        fine_noise_epoch = 100       # after this epoch, new points get fixed noise ...
        fine_noise = 0.004           # ... of this size instead of the radius
    }
}
"""

