_base_ = ['./upernet_vheat_160k_ade20k_512x512_small.py']
