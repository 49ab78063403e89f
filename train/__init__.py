"""Training data and recipes for the demo avatar (issue 9). So far: the synthetic talking-face generator.

    faces    procedural face renderer: identities, poses, mouth states; the mouth measured back from pixels
    speech   espeak-ng sentences and the mouth opening derived from the audio's loudness
    dataset  SyntheticTalkingFaces: deterministic clips with disjoint train / held-out people and sentences
"""
