"""Each process's CPU threads: the user's OMP_NUM_THREADS, else a share of the usable CPUs."""

from __future__ import annotations

import os

import torch

from tinystudent.threads import configure_threads, thread_share, usable_cpus


def test_the_user_setting_is_kept(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("TINYSTUDENT_CONCURRENT", "8")
    assert configure_threads() == 1


def test_concurrent_processes_share_the_cpus(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("TINYSTUDENT_CONCURRENT", "2")
    try:
        assert configure_threads() == max(1, usable_cpus() // 2) == torch.get_num_threads()
        assert os.environ["OMP_NUM_THREADS"] == str(max(1, usable_cpus() // 2))  # children inherit it
    finally:
        torch.set_num_threads(before)
    assert thread_share(10_000) == 1 and thread_share(1) == usable_cpus()


def test_a_bad_setting_is_a_warning_not_a_crash(monkeypatch, capsys):
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("TINYSTUDENT_CONCURRENT", "many")
    try:
        assert configure_threads() == usable_cpus()
    finally:
        torch.set_num_threads(before)
    assert "TINYSTUDENT_CONCURRENT must be a whole number" in capsys.readouterr().err


def test_a_process_follows_the_thread_share_it_is_given(monkeypatch):
    """A `--jobs` worker's training takes the threads of units that ended (`keep_share`)."""
    import multiprocessing

    import torch

    from tinystudent import threads

    before = torch.get_num_threads()
    share = multiprocessing.get_context("spawn").Value("i", 0, lock=False)
    monkeypatch.setattr(threads, "_share", None)
    try:
        threads.follow_share(share)
        threads.keep_share()
        assert torch.get_num_threads() == before  # 0: nothing said yet
        for wanted in (1, 2, 1):
            share.value = wanted
            threads.keep_share()
            assert torch.get_num_threads() == wanted
    finally:
        torch.set_num_threads(before)
