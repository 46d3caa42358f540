"""Training, in the order a run goes through it:

    folder_lock.py   the run owns its folder (--out) from start to end
    run_folder.py    the run's config, the resume from a checkpoint, and the files of each epoch
    loop.py          one epoch of steps over the training set, split over ranks, then validation
    step.py          one optimizer step: forward, loss, backward, clipping, AdamW, schedule
    checkpoint.py    the model, optimizer and history in one .npz, and the model read back
    curves.py        the training curves drawn from the history
"""
