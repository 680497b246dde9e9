"""Realistic sentence pairs (our own text) that every build checks parity on, padded inside the trace shape."""

from __future__ import annotations

PARITY_PAIRS: tuple[tuple[str, str], ...] = (
    (
        "The company said quarterly profit rose 12 percent on stronger demand.",
        "Quarterly profit climbed 12 percent as demand strengthened, the company said.",
    ),
    ("The storm knocked out power to about 40,000 homes overnight.", "Roughly 40,000 homes lost electricity during the overnight storm."),
    ("Shares fell 3 percent in early trading on Tuesday.", "The museum will reopen next spring after a long renovation."),
    ("He was arrested at his home in Ohio on Friday.", "Police arrested him on Friday at his Ohio home."),
    ("The bill passed the Senate by a vote of 62 to 38.", "The Senate rejected the measure after a long debate."),
    ("Officials expect the bridge to be closed for two weeks.", "The bridge should stay shut for about a fortnight, officials said."),
    (
        "The drug reduced the risk of heart attack by a third in the trial.",
        "In the trial, patients on the drug had a third fewer heart attacks.",
    ),
    ("She told reporters the talks had been productive.", "The weather in the capital was cold and wet all week."),
    (
        "The software update fixes a flaw that let attackers take over a computer.",
        "A flaw allowing attackers to seize control of computers is patched by the update.",
    ),
    (
        "Revenue for the year was $4.2 billion, down from $4.6 billion.",
        "Annual revenue dropped to $4.2 billion from $4.6 billion a year earlier.",
    ),
    ("The team won its third straight game on Sunday.", "The coach was fired after the team lost its third straight game."),
    ("Hi.", "Hello."),
    ("The council approved the new budget on Monday night.", "On Monday night the council voted to approve the budget."),
    ("Scientists found water ice in craters near the moon's south pole.", "The rover's battery failed in the cold of the Martian winter."),
    (
        "The airline cancelled more than 200 flights because of the strike.",
        "More than 200 flights were cancelled by the airline due to the strike.",
    ),
    (
        " ".join(
            [
                "The report, which ran to several hundred pages and drew on interviews with officials, analysts, "
                "workers and residents across the region, concluded that the program had been badly managed."
            ]
            * 3
        ),
        " ".join(
            [
                "Investigators wrote that poor management, rather than a lack of money, explained most of the "
                "program's failures, according to a lengthy report released on Thursday."
            ]
            * 3
        ),
    ),  # long enough that `longest_first` truncation to 128 tokens is exercised
)
