"""vHeat-T/S/B have the official parameter and FLOP counts (fvcore, the paper's counter)."""
import json
import os

import pytest
import timm

from classification.models.flops import flop_count, param_count
from conftest import FIXTURES

LAYOUT = json.load(open(os.path.join(FIXTURES, 'official_vheat_layout.json')))
VARIANTS = {'vHeat_tiny': 'vheat_tiny', 'vHeat_small': 'vheat_small', 'vHeat_base': 'vheat_base'}


@pytest.mark.parametrize('name', list(VARIANTS))
def test_published_params_and_flops(name):
    ref = LAYOUT[name]
    model = timm.create_model(VARIANTS[name])
    assert param_count(model) == ref['params_train_mode']
    model.infer_init()
    params = param_count(model)
    assert abs(params - ref['params_deploy_mode_all']) <= 0.005 * ref['params_deploy_mode_all']
    flops = flop_count(model, (1, 3, 224, 224))
    assert abs(flops - ref['fvcore_flops_deploy_224']) <= 0.02 * ref['fvcore_flops_deploy_224']
