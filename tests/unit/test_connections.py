"""The broker's connection table: monitor events and Hellos -> whom to drop."""

from hyperloom.broker.connections import ConnectionTable


def test_a_late_disconnect_of_an_anonymous_connection_spares_the_peer_that_reused_its_fd():
    # The race behind a flaky fuzz test: a connection that never says Hello closes,
    # a client's new connection gets the same fd and says Hello before the broker has
    # read the old DISCONNECTED event. That event used to drop the client.
    table = ConnectionTable()
    table.accepted(7)                      # anonymous
    # ... its DISCONNECTED is read only after the next ACCEPTED on the same fd:
    table.accepted(7)                      # the client's connection, same fd
    assert table.disconnected(7) is None   # the anonymous one closed: nobody to drop
    assert table.claimed(7, b"client") is None
    assert len(table) == 1


def test_hello_before_the_old_disconnect_is_read_ties_the_peer_to_the_newest_connection():
    table = ConnectionTable()
    table.accepted(7)
    table.accepted(7)                      # both ACCEPTED read, old DISCONNECTED not yet
    assert table.claimed(7, b"client") is None
    assert table.disconnected(7) is None   # the old connection: not the client's
    assert table.disconnected(7) == b"client"
    assert len(table) == 0


def test_a_peer_replaced_on_the_same_connection_is_returned_once():
    table = ConnectionTable()
    table.accepted(3)
    assert table.claimed(3, b"old") is None
    assert table.claimed(3, b"new") == b"old"
    assert table.disconnected(3) == b"new"


def test_goodbye_then_hello_on_the_same_connection_keeps_it():
    table = ConnectionTable()
    table.accepted(3)
    table.claimed(3, b"peer")
    assert table.claimed(3, b"peer") is None   # the same routing id says Hello again
    assert table.disconnected(3) == b"peer"


def test_events_of_unknown_connections_are_ignored_and_a_hello_without_accepted_counts():
    table = ConnectionTable()
    assert table.disconnected(9) is None       # accepted before anyone watched
    assert table.claimed(4, b"peer") is None   # its ACCEPTED not read yet
    assert table.disconnected(4) == b"peer"
