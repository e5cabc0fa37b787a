_base_ = ['./mask_rcnn_fpn_coco_tiny_ms_3x.py']
