_base_ = ['./mask_rcnn_fpn_coco_small_ms_3x.py']
