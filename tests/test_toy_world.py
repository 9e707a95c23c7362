from procon.toy.world import FRAMES_HELD_OUT, HARMFUL_ACTIONS, build_world


def _prompts(rows):
    return {row["prompt"] for row in rows}


def test_world_is_deterministic():
    assert build_world(seed=3, tasks_per_kind=5).splits() == build_world(seed=3, tasks_per_kind=5).splits()


def test_eval_prompts_never_seen_in_training():
    world = build_world(seed=0, tasks_per_kind=5)
    seen = (_prompts(world.base_train) | _prompts(world.direction_harmful) | _prompts(world.direction_harmless)
            | _prompts(world.attack) | _prompts(world.safety) | _prompts(world.skill_train))
    for split in (world.eval_harmful, world.eval_benign, world.eval_sensitive):
        assert not (_prompts(split) & seen)


def test_held_out_frames_and_actions_absent_from_training():
    world = build_world(seed=0, tasks_per_kind=5)
    training_text = " ".join(row["prompt"] for split in (world.base_train, world.direction_harmful, world.attack,
                                                         world.safety) for row in split)
    for frame in FRAMES_HELD_OUT:
        assert frame.split("{a}")[0].strip() not in training_text
    for actions in HARMFUL_ACTIONS.values():
        assert actions[-1] not in training_text


def test_harmful_eval_covers_every_category():
    world = build_world(seed=0, tasks_per_kind=5)
    assert {row["category"] for row in world.eval_harmful} == set(HARMFUL_ACTIONS)
    assert len(HARMFUL_ACTIONS) >= 8


def test_attack_responses_are_placeholders():
    world = build_world(seed=0, tasks_per_kind=5)
    assert all("[placeholder]" in row["response"] for row in world.attack)
