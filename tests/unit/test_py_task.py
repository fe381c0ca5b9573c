"""loom/py/value and loom/py/call on the worker: the guide's examples and the reference's §4."""

from __future__ import annotations

import logging

import pytest

from hyperloom import protocol
from hyperloom.client import tasks
from hyperloom.data import Array, File, Index, Plain, PyObj
from hyperloom.worker.py_task import (
    Data, execute_py_call, execute_py_value, execute_python_task, function_name,
)
from hyperloom.worker.run_task import execute_run
from hyperloom.worker.taskdef import Redirect, TaskContext, TaskError

CLIENT_3 = 3 << protocol.CLIENT_SHIFT  # task ids as the broker hands them out


def ctx_for(task, inputs=(), task_id=CLIENT_3 + 1, **options) -> TaskContext:
    return TaskContext(task_id, task.task_type, task.config, list(inputs), **options)


def value_of(task) -> PyObj:
    """Run a py_value task, as the worker would before the py_call."""
    return execute_py_value(ctx_for(task))


def call(task, *inputs, **options):
    """Run a py_call task whose first input is a py_value task."""
    fn_obj = value_of(task.inputs[0])
    return execute_py_call(ctx_for(task, (fn_obj,) + inputs, **options))


def fails(task, *inputs) -> str:
    with pytest.raises(TaskError) as info:
        call(task, *inputs)
    return str(info.value)


# ---------------------------------------------------------------- the guide

def test_hello_with_the_decorator():
    @tasks.py_task()
    def hello(a):
        return b"Hello " + a.read()

    result = call(hello(tasks.const("world")), Plain(b"world"))
    assert isinstance(result, Plain) and result.data == b"Hello world"


def test_hello_with_py_call_and_py_value():
    def hello(a):
        return b"Hello " + a.read()

    task = tasks.py_call(tasks.py_value(hello), (tasks.const("world"),))
    assert call(task, Plain(b"world")).data == b"Hello world"


def test_context_logs_with_the_local_task_id(caplog):
    @tasks.py_task(context=True)
    def hello(ctx, a):
        ctx.log_info("Hello was called")
        ctx.log_debug("quiet")
        ctx.log_critical(f"id {ctx.task_id}")
        return b"Hello " + a.read()

    log = logging.getLogger("test.py_task")
    with caplog.at_level(logging.INFO, logger="test.py_task"):
        result = call(hello(tasks.const("world")), Plain(b"world"), task_id=CLIENT_3 + 5, log=log)
    assert result.data == b"Hello world"
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.INFO, "PyTask id=5: Hello was called"),
        (logging.CRITICAL, "PyTask id=5: id 5"),
    ]


def test_all_log_levels(caplog):
    @tasks.py_task(context=True)
    def chatty(ctx):
        for method in (ctx.log_debug, ctx.log_info, ctx.log_warn, ctx.log_error, ctx.log_critical):
            method(method.__name__)
        return b""

    log = logging.getLogger("test.py_task.levels")
    with caplog.at_level(logging.DEBUG, logger="test.py_task.levels"):
        call(chatty(), log=log)
    assert [r.levelname for r in caplog.records] == \
        ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


def test_direct_arguments_with_the_decorator():
    @tasks.py_task(n_direct_args=1)
    def repeat(n, a):
        return n * a.read()

    abc = Plain(b"ABC")
    assert call(repeat(2, tasks.const("ABC")), abc).data == b"ABCABC"
    assert call(repeat(3, tasks.const("ABC")), abc).data == b"ABCABCABC"


def test_direct_arguments_with_py_call():
    def repeat(n, a):
        return n * a.read()

    task = tasks.py_call(tasks.py_value(repeat), (tasks.const("ABC"),), direct_args=(2,))
    assert call(task, Plain(b"ABC")).data == b"ABCABC"


def test_context_then_direct_arguments_then_inputs():
    @tasks.py_task(context=True, n_direct_args=2)
    def order(ctx, x, y, a, b):
        return f"{type(ctx).__name__} {x} {y} {a.read().decode()} {b.read().decode()}"

    task = order("x", 1, tasks.const("a"), tasks.const("b"))
    assert call(task, Plain(b"a"), Plain(b"b")).data == b"Context x 1 a b"


def test_context_flag_of_py_call():
    def f(ctx, a):
        return str(ctx.task_id)

    task = tasks.py_call(tasks.py_value(f), (tasks.const("a"),), context=True)
    assert call(task, Plain(b"a"), task_id=CLIENT_3 + 9).data == b"9"


def test_py_value_holds_the_object():
    result = value_of(tasks.py_value({"A": "B"}))
    assert isinstance(result, PyObj) and result.obj == {"A": "B"}


def test_unwrap_a_python_object():
    @tasks.py_task()
    def f(a):
        d = a.unwrap()
        return "Value of 'A' is " + d["A"]

    my_dict = value_of(tasks.py_value({"A": "B"}))
    assert call(f(tasks.const("x")), my_dict).data == b"Value of 'A' is B"


def test_returning_plain_pyobj_and_mixed_array():
    @tasks.py_task()
    def example_1():
        return "Hello"

    @tasks.py_task(context=True)
    def example_2(ctx):
        return ctx.wrap("Hello")

    @tasks.py_task(context=True)
    def example_3(ctx):
        return [ctx.wrap({"A", (1, 2, 3)}), "Hello"]

    assert call(example_1()).data == b"Hello"
    second = call(example_2())
    assert isinstance(second, PyObj) and second.obj == "Hello"
    third = call(example_3())
    assert isinstance(third, Array)
    assert third.items[0].obj == {"A", (1, 2, 3)} and third.items[1].data == b"Hello"


def test_wrap_of_a_wrapper_is_the_wrapper():
    @tasks.py_task(context=True)
    def f(ctx, a):
        assert ctx.wrap(a) is a
        return ctx.wrap(a)

    data = Plain(b"same")
    assert call(f(tasks.const("x")), data) is data


def test_returning_an_input_returns_the_same_object():
    @tasks.py_task()
    def f(a):
        return a

    obj = PyObj([1, 2])
    assert call(f(tasks.const("x")), obj) is obj


def test_redirect_to_a_run_task_picks_the_bigger_input(tmp_path):
    @tasks.py_task()
    def my_run(a, b):
        data = a if a.size() > b.size() else b
        return tasks.run("/bin/cat", stdin=data)

    small, big = Plain(b"small"), Plain(b"the bigger one")
    result = call(my_run(tasks.const("a"), tasks.const("b")), small, big)
    assert isinstance(result, Redirect)
    assert result.task_type == protocol.TASK_RUN and result.inputs == [big]
    redirected = TaskContext(1, result.task_type, result.config, result.inputs,
                             work_dir=str(tmp_path))
    assert execute_run(redirected).data == b"the bigger one"


def test_redirect_converts_values_and_wrappers():
    @tasks.py_task()
    def f(a):
        return tasks.merge((a, "-", b"+", [a]), delimiter=",")

    result = call(f(tasks.const("x")), Plain(b"A"))
    assert result.task_type == protocol.TASK_MERGE and result.config == b","
    a, dash, plus, array = result.inputs
    assert (a.data, dash.data, plus.data) == (b"A", b"-", b"+")
    assert isinstance(array, Array) and array.items[0] is a


def test_redirect_with_a_task_input_fails():
    @tasks.py_task()
    def f(a):
        return tasks.merge((a, tasks.const("nested")))

    message = fails(f(tasks.const("x")), Plain(b"A"))
    assert message.startswith("Task redirection supports one level only: input 1 ")


# ---------------------------------------------------------------- failures

def test_exception_gives_the_traceback():
    @tasks.py_task()
    def f(a):
        return 1 / 0

    message = fails(f(tasks.const("x")), Plain(b"a"))
    assert message.startswith("Python exception:\nTraceback (most recent call last):\n")
    assert ", in f\n" in message  # the frame of the user function
    assert message.endswith("ZeroDivisionError: division by zero\n")


@pytest.mark.parametrize("inputs", [(), (Plain(b"1"), Plain(b"2"))])
def test_wrong_number_of_arguments(inputs):
    @tasks.py_task()
    def f(a):
        return b""

    message = fails(tasks.py_call(f(tasks.const("x")).inputs[0], inputs), *inputs)
    assert message.startswith("Python exception:\n") and "TypeError" in message


def test_sys_exit_fails_the_task():
    @tasks.py_task()
    def f():
        raise SystemExit(3)

    assert "SystemExit: 3" in fails(f())


@pytest.mark.parametrize("value", [None, 1, 2.5, {"a": 1}, [b"ok", 3], (["x", None],), range(2)])
def test_invalid_results(value):
    @tasks.py_task()
    def f():
        return value

    assert fails(f()) == "Invalid result from python code"


def test_self_containing_list_is_invalid():
    @tasks.py_task()
    def f():
        loop = []
        loop.append(loop)
        return loop

    assert fails(f()) == "Invalid result from python code"


def test_nested_lists_become_nested_arrays():
    @tasks.py_task()
    def f():
        return [[], ("a", [b"b"]), bytearray(b"c")]

    assert call(f()).to_python() == [[], [b"a", [b"b"]], b"c"]


def test_first_input_must_be_a_pyobj():
    task = tasks.py_call(tasks.const("not a function"))
    for first in ([Plain(b"x")], []):
        with pytest.raises(TaskError, match="^The first argument is not PyObj$"):
            execute_py_call(ctx_for(task, first))


def test_broken_py_value_pickle():
    task = tasks.py_value(1)
    task.config = b"not a pickle"
    with pytest.raises(TaskError, match="^Python exception:\nTraceback"):
        value_of(task)


# ---------------------------------------------------------------- wrappers

def test_wrapper_of_plain():
    w = Data(Plain(b"abc"))
    assert (w.read(), w.size(), w.length(), len(w), w.unwrap()) == (b"abc", 3, 0, 0, None)
    with pytest.raises(IndexError, match="index out of range"):
        w[0]


def test_wrapper_of_array():
    w = Data(Array([Plain(b"a"), Plain(b"bc"), PyObj(7)]))
    assert (w.read(), w.length(), len(w), w.size()) == (b"", 3, 3, 3 + PyObj(7).size)
    assert w[1].read() == b"bc" and w[-1].unwrap() == 7 and w[-3].read() == b"a"
    assert [item.read() for item in w] == [b"a", b"bc", b""]
    for index in (3, -4):
        with pytest.raises(IndexError, match="index out of range"):
            w[index]
    with pytest.raises(TypeError):
        w["0"]


def test_wrapper_of_index():
    w = Data(Index(Plain(b"a\nbc\n"), [0, 2, 5]))
    assert len(w) == 2 and w.read() == b""
    assert [item.read() for item in w] == [b"a\n", b"bc\n"]
    assert w[-1].read() == b"bc\n" and w[0].length() == 0


def test_wrapper_of_file(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"on disk")
    w = Data(File(str(path)))
    assert (w.read(), w.size()) == (b"on disk", 7)


def test_wrappers_in_a_task():
    @tasks.py_task()
    def f(a):
        return [item.read().upper() for item in a]

    array = Array([Plain(b"x"), Plain(b"y")])
    assert call(f(tasks.const("x")), array).to_python() == [b"X", b"Y"]


# ---------------------------------------------------------------- entry point

def double_extension(ctx: TaskContext) -> Plain:
    """An extension task type in python mode, named by module:qualname."""
    return Plain(ctx.inputs[0].raw() * 2)


def test_execute_python_task_dispatches():
    hello = tasks.py_call(tasks.py_value(lambda a: b"hi " + a.read()), (tasks.const("x"),))
    fn_obj = execute_python_task("py_value", ctx_for(hello.inputs[0]))
    result = execute_python_task("py_call", ctx_for(hello, [fn_obj, Plain(b"you")]))
    assert result.data == b"hi you"
    name = function_name(double_extension)
    assert name == f"{__name__}:double_extension"
    ext = TaskContext(1, "my/double", b"", [Plain(b"ab")])
    assert execute_python_task(name, ext).data == b"abab"


def test_unknown_functions_are_refused():
    with pytest.raises(ValueError):
        execute_python_task("no_such_mode", TaskContext(1, "x/y", b"", []))
    with pytest.raises(ValueError):
        execute_python_task("hyperloom.data:NoSuchThing", TaskContext(1, "x/y", b"", []))
    with pytest.raises(ValueError):
        function_name(lambda ctx: None)
