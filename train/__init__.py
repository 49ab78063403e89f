"""The demo avatar (issue 9): synthetic training data and the recipe that trains, distils and ships it.

    faces           procedural face renderer: identities, poses, mouth states; the mouth measured back from pixels
    speech          espeak-ng sentences and the mouth opening derived from the audio's loudness
    dataset         SyntheticTalkingFaces: deterministic clips with disjoint train / held-out people and sentences
    clip_cache      the training clips rendered once to disk
    demo            the model's configs and the settings it streams with
    loop            the resumable, deterministic training loop every stage shares
    train_vae       stage 1: the 3D causal VAE
    stream_features the runtime's streaming audio features, differentiable
    train_denoiser  stage 2: denoiser + reference network + audio encoder, for latent-motion streaming
    distill         stage 3: progressive distillation to few DDIM steps, no CFG
    ship            stage 4: the hallo-rt model folder that becomes the embedded default

The commands, in order, are in train/README.md.
"""
