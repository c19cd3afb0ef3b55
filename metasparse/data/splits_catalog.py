"""Published class splits of the four few-shot benchmarks, in one compact form.

The lists follow the papers: miniImageNet (Ravi & Larochelle 2017, 64/16/20 ImageNet wnids),
tieredImageNet (Ren et al. 2018, 351/97/160 wnids in 20/6/8 categories), CIFAR-FS (Bertinetto et
al. 2019, 64/16/20 CIFAR-100 classes) and FC100 (Oreshkin et al. 2018, 12/4/4 CIFAR-100
superclasses = 60/20/20 classes). Wnids are stored without their leading ``n``.
"""

from __future__ import annotations

SPLITS = ("train", "val", "test")

# CIFAR-100 superclasses and their five fine classes, both in the archive's (alphabetical) order.
CIFAR100_SUPERCLASSES: dict[str, tuple[str, ...]] = {
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}

# CIFAR-FS: the 16 validation and 20 test classes; the other 64 CIFAR-100 classes are training.
_CIFAR_FS_HELD_OUT = {
    "val": """
        beaver beetle butterfly camel cattle crab crocodile flatfish lamp maple_tree motorcycle
        otter sea shark television tractor
    """,
    "test": """
        baby bed bicycle chimpanzee fox leopard man pickup_truck plain poppy rocket rose snail
        sweet_pepper table telephone wardrobe whale woman worm
    """,
}

# FC100: superclasses of the validation and test splits; the other 12 are training.
_FC100_HELD_OUT = {
    "val": (
        "large_carnivores",
        "large_omnivores_and_herbivores",
        "non-insect_invertebrates",
        "small_mammals",
    ),
    "test": ("aquatic_mammals", "insects", "medium_mammals", "people"),
}

_MINIIMAGENET = {
    "train": """
        01532829 01558993 01704323 01749939 01770081 01843383 01910747 02074367 02089867
        02091831 02101006 02105505 02108089 02108551 02108915 02111277 02113712 02120079
        02165456 02457408 02606052 02687172 02747177 02795169 02823428 02966193 03017168
        03047690 03062245 03207743 03220513 03337140 03347037 03400231 03476684 03527444
        03676483 03838899 03854065 03888605 03908618 03924679 03998194 04067472 04243546
        04251144 04258138 04275548 04296562 04389033 04435653 04443257 04509417 04515003
        04596742 04604644 04612504 06794110 07584110 07697537 07747607 09246464 13054560
        13133613
    """,
    "val": """
        01855672 02091244 02114548 02138441 02174001 02950826 02971356 02981792 03075370
        03417042 03535780 03584254 03770439 03773504 03980874 09256479
    """,
    "test": """
        01930112 01981276 02099601 02110063 02110341 02116738 02129165 02219486 02443484
        02871525 03127925 03146219 03272010 03544143 03775546 04146614 04149813 04418357
        04522168 07613480
    """,
}

# tieredImageNet: per split, lines "category: class class ...".
_TIEREDIMAGENET = {
    "train": """
        01524359: 01530575 01531178 01532829 01534433 01537544 01558993 01560419 01580077
           01582220 01592084 01601694
        01674216: 01675722 01677366 01682714 01685808 01687978 01688243 01689811 01692333
           01693334 01694178 01695060
        01726692: 01728572 01728920 01729322 01729977 01734418 01735189 01737021 01739381
           01740131 01742172 01744401 01748264 01749939 01751748 01753488 01755581 01756291
        01844917: 01847000 01855032 01855672 01860187 02002556 02002724 02006656 02007558
           02009229 02009912 02011460 02012849 02013706 02017213 02018207 02018795 02025239
           02027492 02028035 02033041 02037110 02051845 02056570 02058221
        02087551: 02088094 02088238 02088364 02088466 02088632 02089078 02089867 02089973
           02090379 02090622 02090721 02091032 02091134 02091244 02091467 02091635 02091831
           02092002 02092339
        02092468: 02093256 02093428 02093647 02093754 02093859 02093991 02094114 02094258
           02094433 02095314 02095570 02095889 02096051 02096177 02096294 02096437 02096585
           02097047 02097130 02097209 02097298 02097474 02097658 02098105 02098286 02098413
        02120997: 02123045 02123159 02123394 02123597 02124075 02125311 02127052 02128385
           02128757 02128925 02129165 02129604 02130308
        02370806: 02389026 02391049 02395406 02396427 02397096 02398521 02403003 02408429
           02410509 02412080 02415577 02417914 02422106 02422699 02423022 02437312 02437616
        02469914: 02480495 02480855 02481823 02483362 02483708 02484975 02486261 02486410
           02487347 02488291 02488702 02489166 02490219 02492035 02492660 02493509 02493793
           02494079 02497673 02500267
        02913152: 02727426 02793495 02859443 03028079 03032252 03457902 03529860 03661043
           03781244 03788195 03877845 03956157 04081281 04346328
        03125870: 02687172 02690373 02692877 02782093 02951358 02981792 03095699 03344393
           03447447 03662601 03673027 03947888 04147183 04266014 04273569 04347754 04483307
           04552348 04606251 04612504
        03278248: 02979186 02988304 02992529 03085013 03187595 03584254 03777754 03782006
           03857828 03902125 04392985
        03297735: 02776631 02791270 02871525 02927161 03089624 03461385 04005630 04200800
           04443257 04462240
        03414162: 02799071 02802426 03134739 03445777 03598930 03942813 04023962 04118538
           04254680 04409515 04540053 06785654
        03419014: 02667093 02837789 02865351 02883205 02892767 02963159 03188531 03325584
           03404251 03534580 03594734 03595614 03617480 03630383 03710721 03770439 03866082
           03980874 04136333 04325704 04350905 04370456 04371430 04479046 04591157
        03574816: 02708093 02749479 02794156 02841315 02879718 02950826 03196217 03197337
           03467068 03544143 03692522 03706229 03773504 03841143 03891332 04008634 04009552
           04044716 04086273 04090263 04118776 04141975 04317175 04328186 04355338 04356056
           04376876 04548280
        03800933: 02672831 02676566 02787622 02804610 02992211 03017168 03110669 03249569
           03272010 03372029 03394916 03447721 03452741 03494278 03495258 03720891 03721384
           03838899 03840681 03854065 03884397 04141076 04311174 04487394 04515003 04536866
        04014297: 02825657 02840245 02843684 02895154 03000247 03146219 03220513 03347037
           03424325 03527444 03637318 03657121 03788365 03929855 04141327 04192698 04229816
           04417672 04423845 04435653 04507155 04523525 04589890 04590129
        04081844: 02910353 03075370 03208938 03476684 03627232 03803284 03804744 03874599
           04127249 04153751 04162706
        04451818: 02951585 03041632 03109150 03481172 03498962 03649909 03658185 03954731
           03967562 03970156 04154565 04208210
    """,
    "val": """
        02098550: 02099267 02099429 02099601 02099712 02099849 02100236 02100583 02100735
           02100877 02101006 02101388 02101556 02102040 02102177 02102318 02102480 02102973
        03257877: 03207941 03259280 03297495 03483316 03584829 03761084 04070727 04111531
           04442312 04517823 04542943 04554684
        03405265: 02791124 02804414 02870880 03016953 03018349 03125729 03131574 03179701
           03201208 03290653 03337140 03376595 03388549 03742115 03891251 03998194 04099969
           04344873 04380533 04429376 04447861 04550184
        03699975: 02666196 02977058 03180011 03485407 03496892 03642806 03832673 04238763
           04243546 04428191 04525305 06359193
        03738472: 02966193 02974003 03425413 03532672 03874293 03944341 03992509 04019541
           04040759 04067472 04371774 04372370
        03791235: 02701002 02704792 02814533 02930766 03100240 03345487 03417042 03444034
           03445924 03594945 03670208 03770679 03777568 03785016 03796401 03930630 03977966
           04037443 04252225 04285008 04461696 04467665
    """,
    "test": """
        00020090: 03314780 07565083 07579787 07583066 07584110 07590611 07613480 07614500
           07615774 07697313 07697537 07802026 07831146 07836838 07860988 07873807 07875152
           07880968 07892512 07920052 07930864 07932039
        01473806: 01440764 01443537 01484850 01491361 01494475 01496331 01498041 02514041
           02526121 02536864 02606052 02607072 02640242 02641379 02643566 02655020
        02103406: 02104029 02104365 02105056 02105162 02105251 02105412 02105505 02105641
           02105855 02106030 02106166 02106382 02106550 02106662 02107142 02107312 02107574
           02107683 02107908 02108000 02108089 02108422 02108551 02108915 02109047 02109525
           02109961 02110063 02110185 02110627
        02159955: 02165105 02165456 02167151 02168699 02169497 02172182 02174001 02177972
           02190166 02206856 02219486 02226429 02229544 02231487 02233338 02236044 02256656
           02259212 02264363 02268443 02268853 02276258 02277742 02279972 02280649 02281406
           02281787
        03839993: 02788148 02894605 03000134 03160309 03459775 03930313 04239074 04326547
           04501370 04604644
        04531098: 02795169 02808440 02815834 02823428 02909870 02939185 03063599 03063689
           03633091 03786901 03937543 03950228 03983396 04049303 04398044 04493381 04522168
           04553703 04557648 04560804 04562935 04579145 04591713
        09287968: 09193705 09246464 09256479 09288635 09332890 09399592 09421951 09428293
           09468604 09472597
        15046900: 07714571 07714990 07715103 07716358 07716906 07717410 07717556 07718472
           07718747 07720875 07730033 07734744 07742313 07745940 07747607 07749582 07753113
           07753275 07753592 07754684 07760859 07768694
    """,
}


def cifar100_fine_classes() -> list[str]:
    """The 100 CIFAR-100 fine class names in label order (alphabetical, as in ``meta``)."""
    return sorted(name for fines in CIFAR100_SUPERCLASSES.values() for name in fines)


def cifar100_coarse_classes() -> list[str]:
    """The 20 CIFAR-100 superclass names in label order (alphabetical, as in ``meta``)."""
    return sorted(CIFAR100_SUPERCLASSES)


def cifar_fs_classes(split: str) -> list[str]:
    """CIFAR-FS fine class names of ``split`` (64/16/20), sorted."""
    _check_split(split)
    held = {s: set(v.split()) for s, v in _CIFAR_FS_HELD_OUT.items()}
    if split != "train":
        return sorted(held[split])
    return sorted(set(cifar100_fine_classes()) - held["val"] - held["test"])


def fc100_superclasses(split: str) -> list[str]:
    """FC100 superclass names of ``split`` (12/4/4), sorted."""
    _check_split(split)
    if split != "train":
        return sorted(_FC100_HELD_OUT[split])
    held = set(_FC100_HELD_OUT["val"]) | set(_FC100_HELD_OUT["test"])
    return sorted(set(CIFAR100_SUPERCLASSES) - held)


def fc100_classes(split: str) -> list[str]:
    """FC100 fine class names of ``split`` (60/20/20): all fine classes of its superclasses."""
    return sorted(f for c in fc100_superclasses(split) for f in CIFAR100_SUPERCLASSES[c])


def miniimagenet_classes(split: str) -> list[str]:
    """miniImageNet wnids of ``split`` (Ravi & Larochelle: 64/16/20), sorted."""
    _check_split(split)
    return ["n" + w for w in _MINIIMAGENET[split].split()]


def tieredimagenet_categories(split: str) -> dict[str, list[str]]:
    """tieredImageNet ``split``: category wnid -> class wnids (Ren et al.: 20/6/8 categories)."""
    _check_split(split)
    out: dict[str, list[str]] = {}
    category = ""
    for token in _TIEREDIMAGENET[split].split():
        if token.endswith(":"):
            category = "n" + token[:-1]
            out[category] = []
        else:
            out[category].append("n" + token)
    return out


def tieredimagenet_classes(split: str) -> list[str]:
    """tieredImageNet class wnids of ``split`` (351/97/160), sorted."""
    return sorted(c for cs in tieredimagenet_categories(split).values() for c in cs)


def benchmark_classes(benchmark: str, split: str) -> list[str]:
    """Published class names of ``split`` for ``benchmark`` (one of :data:`BENCHMARKS`)."""
    if benchmark not in _CLASS_LISTS:
        raise ValueError(f"unknown benchmark {benchmark!r}; choose one of {', '.join(BENCHMARKS)}")
    return _CLASS_LISTS[benchmark](split)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")


_CLASS_LISTS = {
    "miniimagenet": miniimagenet_classes,
    "tieredimagenet": tieredimagenet_classes,
    "cifar-fs": cifar_fs_classes,
    "fc100": fc100_classes,
}
BENCHMARKS = tuple(_CLASS_LISTS)
