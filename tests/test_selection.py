import math
import struct
import threading

import pytest
import torch

from pytorch_pruner.selection import LayerUnits, kth_smallest, lowest_k, select


def units(n: int, size: int = 1, cap: float = 1.0, floor: float = 0.0, scale: float = 1.0, seed: int = 0) -> LayerUnits:
    scores = torch.rand(n, generator=torch.Generator().manual_seed(seed)) * scale
    return LayerUnits(scores, unit_elements=size, numel=n * size, max_sparsity=cap, min_sparsity=floor)


def counts(chosen) -> list[int]:
    return [int(c.sum()) for c in chosen]


def test_lowest_k_is_exact_and_breaks_ties_by_index() -> None:
    scores = torch.tensor([3.0, 1.0, 1.0, 1.0, 0.0, 5.0])
    assert lowest_k(scores, 3).tolist() == [False, True, True, False, True, False]
    assert lowest_k(torch.zeros(10), 4).tolist() == [True] * 4 + [False] * 6
    assert int(lowest_k(scores, 0).sum()) == 0 and int(lowest_k(scores, 99).sum()) == 6


@pytest.mark.parametrize("s", [0.0, 0.1, 0.29, 0.5, 0.7, 0.9, 0.98])
def test_global_prunes_exactly_floor_s_times_units(s: float) -> None:
    layers = [units(100, seed=1), units(300, seed=2), units(37, seed=3)]
    assert sum(counts(select(layers, s, "global"))) == math.floor(s * 437 + 1e-6)


def test_global_ranks_across_layers() -> None:
    low, high = units(100, seed=1), units(100, seed=2)
    high = LayerUnits(high.scores + 1.0, 1, 100)  # every score above every score of `low`
    assert counts(select([low, high], 0.5, "global")) == [100, 0]


def test_local_ranks_within_each_layer() -> None:
    low, high = units(100, scale=0.1, seed=1), units(40, seed=2)
    chosen = select([low, high], 0.5, "local")
    assert counts(chosen) == [50, 20]
    assert chosen[0].tolist() == lowest_k(low.scores, 50).tolist()


def test_ties_never_prune_more_than_k() -> None:
    flat = [LayerUnits(torch.ones(10), 1, 10), LayerUnits(torch.ones(10), 1, 10)]
    assert counts(select(flat, 0.25, "global")) == [5, 0]  # earlier layer first, deterministic


def test_cap_redistributes_so_the_total_still_reaches_the_target() -> None:
    # INC v1: target 0.9 with cap 0.85 ended at 0.82; the budget the capped layer can't take
    # goes to the others.
    layers = [units(1000, cap=0.85, scale=0.01, seed=1), units(1000, cap=0.95, seed=2), units(1000, cap=0.95, seed=3)]
    got = counts(select(layers, 0.9, "global"))
    assert got[0] == 850
    assert sum(got) == 2700
    assert all(c <= 950 for c in got[1:])


def test_cap_iterates_until_stable() -> None:
    layers = [
        units(100, cap=0.5, scale=0.01, seed=1),
        units(100, cap=0.7, scale=0.1, seed=2),
        units(100, cap=0.99, seed=3),
    ]
    got = counts(select(layers, 0.7, "global"))
    assert got[:2] == [50, 70] and sum(got) == 210


def test_floor_is_best_effort_after_the_cap() -> None:
    strong = units(100, floor=0.3, scale=10.0, seed=1)  # never chosen by ranking alone
    weak = units(100, seed=2)
    got = counts(select([strong, weak], 0.5, "global"))
    assert got == [30, 70]
    # at a step whose sparsity is below the floor, the floor is that sparsity
    assert counts(select([strong, weak], 0.2, "global")) == [20, 20]


def test_units_of_different_sizes_walk_the_ranking_by_weights() -> None:
    # channels of two layers: 10 columns of 10 weights and 20 columns of 20 weights
    a = LayerUnits(torch.linspace(0, 1, 10), unit_elements=10, numel=100)
    b = LayerUnits(torch.linspace(0.05, 1.05, 20), unit_elements=20, numel=400)
    chosen = select([a, b], 0.5, "global")
    pruned = int(chosen[0].sum()) * 10 + int(chosen[1].sum()) * 20
    assert pruned <= 250 and pruned > 250 - 20  # within one unit of the budget, never above
    assert chosen[0][:3].all() and chosen[1][:3].all()


def test_nan_scores_do_not_break_the_ranking() -> None:
    scores = torch.tensor([0.5, float("nan"), 0.2, 0.9])
    chosen = select([LayerUnits(scores, 1, 4)], 0.5, "global")[0]
    assert chosen.tolist() == [False, True, True, False]


@pytest.mark.parametrize("numpy_scan", [True, False])
@pytest.mark.parametrize("domain", ["global", "local"])
def test_nan_scores_found_by_the_scan_rank_lowest_on_large_inputs(
    domain: str, numpy_scan: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above the direct size the NaN check rides on the scan (no pass of its own): the result must
    be that of the scores with NaN as -1, also when the NaN sit below, inside and above the cut;
    with the scan run by numpy or by torch ops."""
    scans = _scan_by(numpy_scan, monkeypatch)
    g = torch.Generator().manual_seed(3)
    a, b = torch.rand(300_000, generator=g), torch.rand(200_000, generator=g)
    a[[5, 70_000, 299_999]] = float("nan")
    b[[0, 123_456]] = float("nan")
    layers = [LayerUnits(a, 4, 4 * a.numel(), max_sparsity=0.95), LayerUnits(b, 4, 4 * b.numel(), max_sparsity=0.95)]
    cleaned = [LayerUnits(torch.nan_to_num(u.scores, nan=-1.0), 4, u.numel, max_sparsity=0.95) for u in layers]
    got, want = select(layers, 0.7, domain), select(cleaned, 0.7, domain)
    assert all(torch.equal(x, y) for x, y in zip(got, want, strict=True))
    assert got[0][[5, 70_000, 299_999]].all() and got[1][[0, 123_456]].all()
    assert torch.equal(lowest_k(a, 1000), lowest_k(torch.nan_to_num(a, nan=-1.0), 1000))
    assert lowest_k(a, 3)[[5, 70_000, 299_999]].all()
    assert bool(scans) == numpy_scan


def test_unknown_domain() -> None:
    with pytest.raises(ValueError, match="domain must be 'global', 'local' or 'row'"):
        select([units(4)], 0.5, "everywhere")


def reference_global(layers: list[LayerUnits], s: float) -> list[int]:
    """Walk one stable ranking from the lowest score, skipping layers at their cap."""
    flat = [(float(v), li, j) for li, layer in enumerate(layers) for j, v in enumerate(layer.scores.tolist())]
    flat.sort(key=lambda item: (item[0], item[1], item[2]))
    caps = [layer.bounds(s)[1] for layer in layers]
    k = math.floor(s * sum(layer.numel for layer in layers) / layers[0].unit_elements + 1e-6)
    got = [0] * len(layers)
    for _, li, _ in flat:
        if sum(got) == k:
            break
        if got[li] < caps[li]:
            got[li] += 1
    return got


@pytest.mark.parametrize("seed", range(8))
def test_global_selection_with_caps_and_ties_matches_a_reference_walk(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(5, 60, (4,), generator=g).tolist()
    layers = [
        LayerUnits(torch.randint(0, 6, (n,), generator=g) * (0.2 if i == 0 else 1.0), 2, 2 * n, max_sparsity=0.7)
        for i, n in enumerate(sizes)
    ]
    chosen = select(layers, 0.65, "global")
    assert counts(chosen) == reference_global(layers, 0.65)
    for layer, mask in zip(layers, chosen, strict=True):  # each layer prunes its own lowest units
        if mask.any() and not mask.all():
            assert layer.scores[mask].max() <= layer.scores[~mask].min()


@pytest.mark.parametrize("n", [1000, 300_000, 2_000_000])
@pytest.mark.parametrize("q", [0.0001, 0.5, 0.9, 0.99999])
def test_kth_smallest_is_exact_on_large_inputs_with_ties(n: int, q: float) -> None:
    g = torch.Generator().manual_seed(n)
    x = torch.cat([torch.rand(n // 2, generator=g), torch.randint(0, 50, (n - n // 2,), generator=g).float() / 50])
    k = max(1, int(q * n))
    assert kth_smallest(x, k) == torch.kthvalue(x, k).values


def test_kth_smallest_of_several_tensors_equals_that_of_their_concatenation() -> None:
    g = torch.Generator().manual_seed(1)
    parts = [torch.rand(n, generator=g) for n in (400_000, 3, 0, 250_000)]
    for k in (1, 7, 325_000, 650_003):
        assert kth_smallest(parts, k) == torch.kthvalue(torch.cat(parts), k).values


def test_floor_and_cap_together_reach_a_reachable_target() -> None:
    # issue 9: 3 layers of 100, cap 0.6, floor 0.45, target 0.58 gave 0.55 (174 reachable: 60+60+54)
    g = torch.Generator().manual_seed(0)
    low, mid, high = (torch.rand(100, generator=g) for _ in range(3))
    scores = [low * 0.01, 0.01 + mid * 0.1, 1 + high]  # ranked: all of low, then mid, then high
    layers = [LayerUnits(s, 1, 100, max_sparsity=0.6, min_sparsity=0.45) for s in scores]
    assert counts(select(layers, 0.58, "global")) == [60, 60, 54]
    without_floor = [LayerUnits(s, 1, 100, max_sparsity=0.6) for s in scores]
    assert sum(counts(select(without_floor, 0.58, "global"))) == 174


def brute_force(layers: list[LayerUnits], s: float) -> tuple[list[int], list[list[bool]]]:
    """Every count vector within the bounds that sums to the budget (or, floors over budget, within
    the floors); each layer prunes its lowest units; the best prunes the lowest set, compared as
    sum(2**rank) over one total order (score, layer, index): unique, and what a greedy walk picks."""
    import itertools

    flat = sorted((float(v), li, j) for li, layer in enumerate(layers) for j, v in enumerate(layer.scores.tolist()))
    rank = {(li, j): r for r, (_, li, j) in enumerate(flat)}
    own = [sorted(range(layer.scores.numel()), key=lambda j, li=li: rank[(li, j)]) for li, layer in enumerate(layers)]
    k = math.floor(s * sum(layer.numel for layer in layers) + 1e-6) // layers[0].unit_elements
    lo, hi = zip(*(layer.bounds(s) for layer in layers), strict=True)
    if k <= sum(lo):
        lo, hi = (0,) * len(layers), lo
    k = min(k, sum(hi))
    best, best_cost = None, None
    for c in itertools.product(*(range(a, b + 1) for a, b in zip(lo, hi, strict=True))):
        if sum(c) != k:
            continue
        cost = sum(1 << rank[(li, j)] for li in range(len(layers)) for j in own[li][: c[li]])
        if best_cost is None or cost < best_cost:
            best, best_cost = c, cost
    assert best is not None
    masks = [[j in set(own[li][: best[li]]) for j in range(layer.scores.numel())] for li, layer in enumerate(layers)]
    return list(best), masks


def random_case(seed: int) -> tuple[list[LayerUnits], float]:
    g = torch.Generator().manual_seed(seed)
    rnd = lambda: float(torch.rand(1, generator=g))  # noqa: E731
    size = int(torch.randint(1, 3, (1,), generator=g))
    layers = []
    for _ in range(int(torch.randint(1, 5, (1,), generator=g))):
        n = int(torch.randint(1, 8, (1,), generator=g))
        scores = torch.randint(0, 4, (n,), generator=g).float() if rnd() < 0.5 else torch.rand(n, generator=g)
        cap = 1.0 if rnd() < 0.3 else rnd()
        floor = 0.0 if rnd() < 0.3 else rnd() * 0.8
        layers.append(LayerUnits(scores, size, n * size, max_sparsity=cap, min_sparsity=floor))
    return layers, round(rnd(), 3)


def test_masks_completed_from_the_bracketing_pass_equal_the_full_range_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inputs large enough for a narrow bracket (the band kept, and each mask completed from the
    bracketing pass), with many ties, caps and floors: the masks equal those of the full-range path
    (which the brute-force test above checks)."""
    from pytorch_pruner import selection

    g = torch.Generator().manual_seed(11)
    cases = []
    for seed in range(16):
        layers = []
        for _ in range(int(torch.randint(1, 5, (1,), generator=g))):
            n = int(torch.randint(500, 3000, (1,), generator=g))
            scores = torch.randint(0, 40, (n,), generator=g).float() if seed % 2 else torch.rand(n, generator=g)
            cap = 1.0 if seed % 3 == 0 else 0.5 + 0.5 * float(torch.rand(1, generator=g))
            floor = 0.3 * float(torch.rand(1, generator=g))
            layers.append(LayerUnits(scores, 4, 4 * n, max_sparsity=cap, min_sparsity=floor))
        cases.append((layers, 0.2 + 0.7 * float(torch.rand(1, generator=g)), "global" if seed % 4 else "local"))
    want = [[m.tolist() for m in select(layers, s, domain)] for layers, s, domain in cases]
    monkeypatch.setattr(selection, "_DIRECT", 0)
    monkeypatch.setattr(selection, "_SELECT_ONE", 0)  # held layers ranked by the histograms too
    monkeypatch.setattr(selection, "_SELECT_ALL", 0)
    monkeypatch.setattr(selection, "_CHUNK", 97)
    for (layers, s, domain), expected in zip(cases, want, strict=True):
        assert [m.tolist() for m in select(layers, s, domain)] == expected, (s, domain)


def _scan_by(numpy_scan: bool, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make the passes over the scores (the scans that count and keep the units around the cut, and
    the masks' comparisons) run by numpy, counting them in the returned list, or by torch ops."""
    from pytorch_pruner import selection

    if not numpy_scan:
        monkeypatch.setattr(selection, "_as_numpy", lambda part: None)
        return []
    calls: list[int] = []
    as_numpy = selection._as_numpy
    monkeypatch.setattr(selection, "_as_numpy", lambda part: calls.append(part.numel()) or as_numpy(part))
    return calls


@pytest.mark.parametrize("numpy_scan", [True, False])
@pytest.mark.parametrize("path", ["direct", "sampled", "kept"])
def test_global_selection_with_random_caps_and_floors_matches_brute_force(
    path: str, numpy_scan: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The brute-force walk's masks, by every path of the selection, with the passes over the scores
    run by numpy and by torch ops."""
    from pytorch_pruner import selection

    scans = _scan_by(numpy_scan, monkeypatch)
    if path != "direct":  # the large-input machinery on small inputs: sample, chunks, misses, and
        # "sampled": rescans of whole parts each round; "kept": the units inside the bracket kept,
        # and the masks completed from the bracketing pass
        monkeypatch.setattr(selection, "_DIRECT", 0)
        monkeypatch.setattr(selection, "_SELECT_ONE", 0)
        monkeypatch.setattr(selection, "_SELECT_ALL", 0)
        monkeypatch.setattr(selection, "_SAMPLE", 4 if path == "sampled" else 16)
        monkeypatch.setattr(selection, "_CHUNK", 3)
        monkeypatch.setattr(selection, "_BAND_SHARE", 0.0 if path == "sampled" else 1.0)
    for seed in range(200):
        layers, s = random_case(seed)
        want_counts, want_masks = brute_force(layers, s)
        chosen = select(layers, s, "global")
        assert counts(chosen) == want_counts, (seed, s, layers)
        assert [c.tolist() for c in chosen] == want_masks, seed
        lo, hi = zip(*(layer.bounds(s) for layer in layers), strict=True)
        k = math.floor(s * sum(layer.numel for layer in layers) + 1e-6) // layers[0].unit_elements
        if sum(lo) <= k:  # reachable: the total is the target, clipped by the caps
            assert sum(want_counts) == min(k, sum(hi))
    assert bool(scans) == numpy_scan


def test_small_layers_ranked_by_kthvalue_equal_the_histogram_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """One layer of few units (a layer held at its cap or floor, local ranking, lowest_k) is ranked
    by torch.kthvalue; on random data with many ties, -0.0 next to 0.0, NaN, caps and floors its
    masks equal those of the histograms (which the brute-force tests check)."""
    from pytorch_pruner import selection

    g = torch.Generator().manual_seed(5)
    cases = []
    for seed in range(24):
        layers = []
        for _ in range(int(torch.randint(1, 5, (1,), generator=g))):
            n = int(torch.randint(1, 2000, (1,), generator=g))
            scores = torch.randint(0, 30, (n,), generator=g).float() if seed % 2 else torch.rand(n, generator=g)
            if seed % 3 == 0:
                scores[torch.rand(n, generator=g) < 0.2] = -0.0
            if seed % 5 == 0:
                scores[torch.rand(n, generator=g) < 0.05] = float("nan")
            cap = 1.0 if seed % 4 == 0 else 0.3 + 0.7 * float(torch.rand(1, generator=g))
            floor = 0.4 * float(torch.rand(1, generator=g))
            layers.append(LayerUnits(scores, 4, 4 * n, max_sparsity=cap, min_sparsity=floor))
        cases.append((layers, 0.1 + 0.85 * float(torch.rand(1, generator=g))))
    domains = ("global", "local", "row")
    fast = [[[m.tolist() for m in select(layers, s, d)] for d in domains] for layers, s in cases]
    lowest = [
        [lowest_k(layer.scores, k).tolist() for layer in layers for k in (1, layer.units // 2)] for layers, _ in cases
    ]
    held = 0
    for layers, s in cases:  # the fast path is taken: some layer is held at a bound away from the cut
        chosen = select(layers, s, "global")
        held += any(int(c.sum()) == layer.bounds(s)[1] < layer.units for c, layer in zip(chosen, layers, strict=True))
    assert held >= 3
    monkeypatch.setattr(selection, "_SELECT_ONE", 0)
    monkeypatch.setattr(selection, "_SELECT_ALL", 0)
    for (layers, s), want, want_lowest in zip(cases, fast, lowest, strict=True):
        assert [[m.tolist() for m in select(layers, s, d)] for d in domains] == want, s
        assert [lowest_k(layer.scores, k).tolist() for layer in layers for k in (1, layer.units // 2)] == want_lowest


def _capped_cases(
    seed: int,
    count: int,
    max_layers: int,
    sizes: tuple[int, int],
    span: int,
    floor: float,
    nan_every: int = 0,
) -> list[tuple[list[LayerUnits], float]]:
    """Random global-selection cases of 4-weight units: integer scores with many ties (odd cases)
    or normal ones, -0.0 next to 0.0 (every third), some NaN (every *nan_every*-th), some layers
    scored low so that they are held at their cap, random caps and (even cases) floors."""
    g = torch.Generator().manual_seed(seed)
    cases = []
    for case in range(count):
        layers = []
        for _ in range(int(torch.randint(1, max_layers + 1, (1,), generator=g))):
            n = int(torch.randint(*sizes, (1,), generator=g))
            scores = torch.randint(-span, span, (n,), generator=g).float() if case % 2 else torch.randn(n, generator=g)
            scores[scores == 0] = -0.0 if case % 3 == 0 else 0.0
            if nan_every and case % nan_every == 0:
                scores[torch.rand(n, generator=g) < 0.02] = float("nan")
            scale = 0.01 if torch.rand(1, generator=g) < 0.3 else 1.0  # low scores: held at the cap
            cap = 1.0 if case % 5 == 0 else 0.5 + 0.5 * float(torch.rand(1, generator=g))
            least = 0.0 if case % 2 else floor * float(torch.rand(1, generator=g))
            layers.append(LayerUnits(scores * scale, 4, 4 * n, max_sparsity=cap, min_sparsity=least))
        cases.append((layers, 0.1 + 0.85 * float(torch.rand(1, generator=g))))
    return cases


def test_cut_found_inside_the_bracket_by_kthvalue_equals_the_histogram_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """In one process, when no layer's cap or floor is reached inside the bracket, the cut is the
    kthvalue of the units inside it: on random data with ties, -0.0, caps and floors (some layers at
    their cap before the bracket, some reaching it inside), its masks and kth_smallest's values equal
    those of the histogram rounds, bit for bit."""
    from pytorch_pruner import selection

    monkeypatch.setattr(selection, "_DIRECT", 0)  # small inputs through the bracket and the kept band
    monkeypatch.setattr(selection, "_SELECT_ALL", 0)
    monkeypatch.setattr(selection, "_CHUNK", 97)
    monkeypatch.setattr(selection, "_BAND_SHARE", 1.0)
    cases = _capped_cases(3, count=24, max_layers=5, sizes=(200, 3000), span=20, floor=0.3)
    calls = []
    settled = selection._settled_in_band
    monkeypatch.setattr(selection, "_settled_in_band", lambda *a: calls.append(r := settled(*a)) or r)
    fast = [[m.tolist() for m in select(layers, s)] for layers, s in cases]
    kth = [[kth_smallest([la.scores for la in layers], q).item() for q in (1, 77, 500)] for layers, _ in cases]
    assert sum(r is not None for r in calls) >= 20 and any(r is None for r in calls)  # both paths are taken
    # the k-th value among -0.0 and 0.0 is 0.0, as the histograms' keys (which do not tell them apart) give it
    g = torch.Generator().manual_seed(4)
    zeros = torch.cat([torch.full((400,), -0.0), torch.rand(600, generator=g) + 1, -torch.rand(600, generator=g) - 1])
    assert struct.pack("<f", kth_smallest(zeros[torch.randperm(1600, generator=g)], 700).item()) == struct.pack(
        "<f", 0.0
    )
    monkeypatch.setattr(selection, "_BAND_SELECT", False)
    for (layers, s), want, want_kth in zip(cases, fast, kth, strict=True):
        assert [m.tolist() for m in select(layers, s)] == want, s
        got = [kth_smallest([la.scores for la in layers], q).item() for q in (1, 77, 500)]
        assert [struct.pack("<f", v) for v in got] == [struct.pack("<f", v) for v in want_kth]


@pytest.mark.parametrize("guess", ["none", "sampled", "wrong"])
@pytest.mark.parametrize("numpy_select", [True, False])
def test_all_units_ranked_by_kth_values_equal_the_histograms(
    numpy_select: bool, guess: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In one process, few units in all are ranked by k-th value selections over all of them (by
    numpy.partition, or torch.kthvalue without numpy), holding the layers that reach a cap or floor
    and selecting again: on random data with ties, -0.0, NaN, caps and floors (layers of low scores
    held at their cap) the masks equal those of the sample and histograms, bit for bit, and both the
    selections and the fallback to the histograms are taken. The same whether the first rounds start
    with no layer held, with the held layers guessed from a sample, or from a random (wrong) guess."""
    from pytorch_pruner import selection

    if not numpy_select:
        monkeypatch.setattr(selection, "_numpy", None)
    monkeypatch.setattr(selection, "_GUESS_MIN", 1 << 40 if guess == "none" else 0)
    if guess == "wrong":
        rng = torch.Generator().manual_seed(1)
        monkeypatch.setattr(
            selection, "_held_guess", lambda scores, *_: torch.randint(-1, 2, (len(scores),), generator=rng).tolist()
        )
    cases = _capped_cases(8, count=20, max_layers=6, sizes=(100, 1500), span=15, floor=0.4, nan_every=7)
    results = []
    selected = selection._lowest_selected_all
    monkeypatch.setattr(selection, "_lowest_selected_all", lambda *a: results.append(r := selected(*a)) or r)
    fast = [[m.tolist() for m in select(layers, s)] for layers, s in cases]
    held = sum(
        any(int(m.sum()) == la.bounds(s)[1] < la.units for m, la in zip(select(layers, s), layers, strict=True))
        for layers, s in cases
    )
    settled = sum(r is not None for r in results)  # a wrong guess costs rounds: fewer settle before the fallback
    assert settled >= (10 if guess == "wrong" else 25) and any(r is None for r in results) and held >= 3
    monkeypatch.setattr(selection, "_SELECT_ALL", 0)
    for (layers, s), want in zip(cases, fast, strict=True):
        assert [m.tolist() for m in select(layers, s)] == want, s


@pytest.fixture
def threads(request: pytest.FixtureRequest):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("threads", [1, 3], indirect=True)
@pytest.mark.parametrize("masks", [True, False])
def test_scans_by_numpy_and_by_torch_return_the_same_counts_values_positions_and_masks(
    masks: bool, threads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scan's results are all the cut and the masks are made from; numpy's comparisons must give
    exactly torch's: on scores with many ties (at the bracket's ends too), -0.0 and 0.0, infinities
    and NaN (counted in neither; the NaN flag raised), over chunks that split the layers unevenly,
    one chunk after the other or spread over threads."""
    from pytorch_pruner import selection

    monkeypatch.setattr(selection, "_CHUNK", 61)
    g = torch.Generator().manual_seed(5)
    parts = [torch.randint(-6, 7, (n,), generator=g).float() / 4 for n in (1, 60, 61, 500, 1337)]
    parts[3][::17] = -0.0
    parts[4][[3, 400, 1200]] = torch.tensor([float("inf"), float("-inf"), float("nan")])
    parts[2][7] = float("nan")
    keys = sorted({int(k) for k in selection._key(torch.cat(parts)[torch.cat(parts) == torch.cat(parts)])})
    numpy_passes: list[int] = []
    as_numpy = selection._as_numpy
    comparing: set[str] = set()  # the threads numpy compared on
    real_numpy = selection._numpy

    class Spy:
        def __getattr__(self, name: str):
            return getattr(real_numpy, name)

        def less(self, *args, **kwargs):
            comparing.add(threading.current_thread().name)
            return real_numpy.less(*args, **kwargs)

    monkeypatch.setattr(selection, "_numpy", Spy())

    def counted(part: torch.Tensor):
        numpy_passes.append(part.numel())
        return as_numpy(part)

    for lo, hi in [(keys[0], keys[-1]), (keys[3], keys[3]), (keys[2], keys[8]), (keys[5], keys[-2]), (-1, 0)]:
        scans = []
        for numpy_scan in (True, False):
            monkeypatch.setattr(selection, "_as_numpy", counted if numpy_scan else lambda p: None)
            scans.append(selection._scan(parts, lo, hi, limit=10**6, masks=masks))
        (stats_np, band_np), (stats_pt, band_pt) = scans
        assert torch.equal(stats_np, stats_pt), (lo, hi)
        assert stats_np[2].tolist() == [0, 0, 1, 0, 1]
        for a, b in zip(band_np, band_pt, strict=True):
            assert a.whole == b.whole == ((lo, hi) == (keys[0], keys[-1]))  # -inf..inf: no pass at all
            if a.whole:
                continue
            assert torch.equal(a.values, b.values)  # NaN excluded from both: equal compares them
            if masks:
                assert torch.equal(a.positions, b.positions) and a.positions.dtype == b.positions.dtype
                assert torch.equal(a.below, b.below)
    assert numpy_passes
    assert any(name.startswith("pytorch-pruner-select") for name in comparing) == (threads > 1)


def test_a_torch_without_numpy_support_falls_back_to_torch_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    """numpy installed but a torch that cannot hand tensors to it ("Numpy is not available"): every
    numpy path (k-th values, scans, mask comparisons) falls back to torch ops, with the same masks."""
    g = torch.Generator().manual_seed(9)
    layers = [LayerUnits(torch.rand(n, generator=g), 4, 4 * n, max_sparsity=0.9) for n in (300_000, 1_000, 5)]
    want = [m.clone() for m in select(layers, 0.6, "global")]

    def no_numpy(self: torch.Tensor, *args, **kwargs):
        raise RuntimeError("Numpy is not available")

    monkeypatch.setattr(torch.Tensor, "numpy", no_numpy)
    got = select(layers, 0.6, "global")
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    assert int(sum(m.sum() for m in got)) == math.floor(0.6 * 301_005)
