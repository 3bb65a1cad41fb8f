"""Evaluation of matchers on image pairs with a known homography (synthetic pairs from photos, or HPatches).

    mambaglue eval-homography --images DIR --pairs N --seed S --features xfeat --methods mambaglue,lightglue \\
        --json out.json [--plots DIR] [--alphas 0.8,0.9,0.95,1.0,none] [--hpatches DIR]
"""
