"""mmengine's checkpoint hook, made never to leave a run without a loadable checkpoint.

Registered in mmengine's HOOKS by ``detection/vheat`` and ``segmentation/vheat`` (the configs' custom_imports).
"""
import os

from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook
from mmengine.registry import HOOKS

from classification.core.fileio import commit_file, write_durably


@HOOKS.register_module()
class DurableCheckpointHook(CheckpointHook):
    """``CheckpointHook`` that writes each checkpoint under a temporary name, fsyncs it, renames it into place,
    then points ``last_checkpoint`` (what ``--resume`` reads) at it, also atomically, and only then removes the
    checkpoints beyond ``max_keep_ckpts``. (mmengine removes the oldest first and writes in place: a kill during
    the write left nothing to resume from.) Local file systems only, as the configs use."""

    def _save_checkpoint_with_step(self, runner, step, meta):
        outdated = []
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                outdated.append(self.keep_ckpt_ids.popleft())
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))
        filename = self.filename_tmpl.format(step)
        self.last_ckpt = os.path.join(self.out_dir, filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        runner.save_checkpoint(self.out_dir, filename + '.tmp', self.file_client_args,
                               save_optimizer=self.save_optimizer, save_param_scheduler=self.save_param_scheduler,
                               meta=meta, by_epoch=self.by_epoch, backend_args=self.backend_args, **self.args)
        if not is_main_process():
            return
        commit_file(self.last_ckpt + '.tmp', self.last_ckpt)
        write_durably(os.path.join(runner.work_dir, 'last_checkpoint'), self.last_ckpt.encode())
        for old in outdated:
            path = os.path.join(self.out_dir, self.filename_tmpl.format(old))
            if os.path.isfile(path):
                os.remove(path)

