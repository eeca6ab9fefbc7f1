import pytest

from lmdlt.data.longtail import cui_train_counts, lmd_keep_counts


# ISIC 2019 training class counts without UNK, sorted descending: NV MEL BCC BKL AK SCC VASC DF
ISIC2019 = [12875, 4522, 3323, 2624, 867, 628, 253, 239]


def test_lmd_scheme_reproduces_the_reference_isic2019_lt_split():
    assert lmd_keep_counts(ISIC2019, 100) == [12875, 4140, 2785, 2013, 609, 404, 149, 129]


def test_lmd_scheme_tail_is_head_over_r():
    keep = lmd_keep_counts(ISIC2019, 500)
    assert keep[0] == 12875 and keep[-1] == -(-12875 // 500)  # ceil(n_max / r)


def test_lmd_scheme_rejects_r_below_natural_imbalance():
    natural = ISIC2019[0] / ISIC2019[-1]  # 53.9
    with pytest.raises(ValueError, match=r"below the data's natural imbalance 53\.87"):
        lmd_keep_counts(ISIC2019, 20)
    lmd_keep_counts(ISIC2019, natural)  # exactly the natural imbalance is allowed (mu = 1)


def test_lmd_scheme_needs_descending_counts():
    with pytest.raises(ValueError, match="descending"):
        lmd_keep_counts([10, 20, 5], 10)


@pytest.mark.parametrize("r,expected", [
    (100, [5000, 2590, 1342, 695, 360, 187, 97, 51]),
    (200, [5000, 2346, 1101, 517, 243, 114, 54, 25]),
    (500, [5000, 2058, 847, 349, 144, 60, 25, 11]),
])
def test_cui_scheme_reproduces_ju_et_al_isic2019_lt_counts(r, expected):
    # the counts of Ju et al.'s published split files (shared/data/README.md)
    assert cui_train_counts(5000, r, 8) == expected


def test_cui_scheme_on_digits_default():
    # digits: smallest class 174 images, minus 15 val + 30 test = 129 for the head
    assert cui_train_counts(129, 100, 10) == [129, 78, 47, 28, 17, 10, 6, 4, 3, 2]


@pytest.mark.parametrize("ratio", [0.5, float("nan"), float("inf"), -3])
def test_impossible_ratios_are_errors(ratio):
    with pytest.raises(ValueError, match="imbalance_ratio"):
        cui_train_counts(100, ratio, 5)
    with pytest.raises(ValueError, match="imbalance_ratio"):
        lmd_keep_counts([100, 50, 10], ratio)


def test_one_class_is_an_error():
    with pytest.raises(ValueError, match="at least 2 classes"):
        cui_train_counts(100, 10, 1)



def test_a_ratio_the_data_cannot_give_is_an_error_naming_it_and_the_maximum():
    with pytest.raises(ValueError, match=r"r=1e\+12 is more than the data can give.*1 <= r <= 129"):
        cui_train_counts(129, 1.0e12, 10)
    with pytest.raises(ValueError, match=r"r=1000 is more than the data can give.*5\.00 <= r <= 500"):
        lmd_keep_counts([500, 300, 100], 1000)
    assert cui_train_counts(129, 129, 3) == [129, 12, 1]  # the largest ratio the data can give
    lmd_keep_counts([500, 300, 100], 500)  # r = n_max: allowed
