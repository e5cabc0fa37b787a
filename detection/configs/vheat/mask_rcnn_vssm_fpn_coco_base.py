_base_ = ['./mask_rcnn_fpn_coco_base.py']
