import jax

# Accuracy tests run in float64; float32 behaviour is tested in a subprocess
# (tests/implicit/test_float32.py) so that it sees JAX's default precision.
jax.config.update("jax_enable_x64", True)


# The default run (`pytest`, which excludes `-m slow`) keeps at least one case of
# every kind of check within the suite's time budget (~15 min on 2 cores); these
# heavier cases, each a further instance of a kind already in the default run, run
# with `pytest -m slow`. A node id here marks every parametrisation under it
# unless it names one (`test[...]`).
_SLOW = (
    # bilevel: stochastic statistics, every algorithm's resume and display
    "bilevel/test_algorithms.py::test_stochastic_neighbourhood_shrinks_with_batch_size",
    "bilevel/test_algorithms.py::test_vmap_over_seeds_matches_single_runs",
    "bilevel/test_algorithms.py::test_svrg_removes_the_noise_floor",
    "bilevel/test_algorithms.py::test_deterministic_convergence[penalty]",
    "bilevel/test_algorithms.py::test_deterministic_convergence[f2sa]",
    "bilevel/test_algorithms.py::test_deterministic_convergence[unrolled]",
    "bilevel/test_algorithms.py::test_deterministic_convergence[truncated]",
    "bilevel/test_algorithms.py::test_projection_keeps_x_in_the_set",
    "bilevel/test_algorithms.py::test_run_continues_from_state_and_shows_progress",
    "bilevel/test_resume.py::test_stopped_saved_loaded_and_resumed_is_bit_identical[",
    "bilevel/test_resume.py::test_same_key_same_run_and_another_key_another_run",
    "bilevel/test_resume.py::test_distillation_resumes_bit_identically",
    "bilevel/test_run_display.py::test_progress_and_callback_give_the_same_numbers[F2SA]",
    "bilevel/test_run_display.py::test_plot_history",
    "bilevel/test_run_display.py::test_results_print_readably",
    "bilevel/test_distillation.py::test_linearized_network_hypergradient_matches_finite",
    "bilevel/test_distillation.py::test_linearized_network_distillation_lowers_the_loss",
    "bilevel/test_distillation.py::test_kip_beats_a_random_subset_on_digits",
    "bilevel/test_distillation.py::test_nngp_matches_a_wide_network[1-",
    "bilevel/test_suite.py::test_issue_quadratic_with_defaults[PenaltyMethod]",
    "bilevel/test_suite.py::test_explicit_values_override_the_derived_ones",
    "bilevel/test_adjoint_warm_start.py::test_a_warm_started_run_agrees_with_a_cold_one",
    "bilevel/test_bo_rep.py::test_deterministic_reaches_1e_3_with_a_decaying_step",
    "bilevel/test_lvhba.py::test_stochastic_form_under_vmap_over_seeds",
    "bilevel/test_lvhba.py::test_infeasible_start_is_projected[False]",
    "bilevel/test_lvhba.py::test_infeasible_constraints_raise[True]",
    "bilevel/test_hypergradient.py::test_unrolled_and_truncated_long_horizon",
    "bilevel/test_hypergradient.py::test_short_unroll_is_biased_and_truncation_more_so",
    # the contract's float32 runs (float32 is also covered by implicit/test_float32)
    "contract/test_contract.py::test_contract_float32",
    "contract/test_contract.py::test_contract_float64[custom_fixed_point-jacobians]",
    "contract/test_contract.py::test_contract_float64[kernels-rbf-jacobians]",
    # examples run as scripts (the README's main job runs the quickstart)
    "examples/test_meta_learning.py::test_meta_learning_example",
    "examples/test_meta_learning.py::test_imaml_meta_gradient_is_grad_of_vmap",
    "examples/test_hyper_cleaning.py",
    "examples/test_per_parameter_weight_decay.py::test_per_parameter_weight_decay_ex",
    "examples/test_per_parameter_weight_decay.py::test_per_weight_hypergradient_matches_finite_differences[linear_solver0]",
    "examples/test_learning_rate_schedule.py",
    "examples/test_svm_hyperparameters.py",
    "examples/test_dataset_distillation.py",
    "examples/test_quickstart.py::test_quickstart_per_feature",
    # implicit: the heaviest property and derivative checks
    "implicit/test_properties.py::test_jvp_and_vjp_are_transposes",
    "implicit/test_properties.py::test_pytree_solutions_of_random_shapes",
    "implicit/test_custom_root.py::test_hessian_matches_finite_differences_of_gradient",
    "implicit/test_adjoint_solve.py::test_grad_of_vmap_with_one_shared_and_one_batched_leaf[v]",
    "implicit/test_adjoint_solve.py::test_imaml_meta_gradient_of_the_mean_over_tasks",
    # solvers and CUTEst: one case of each solver family stays
    "solvers/test_augmented_lagrangian.py::test_qp_derivatives_match_jaxopt_osqp",
    "solvers/test_sketch_properties.py::test_vjp_through_the_solve_is_the_transposed",
    "solvers/test_sketched_newton.py::test_redundant_constraints_are_solved_inconsistent_ones_singular[False]",
    "solvers/test_sketched_newton.py::test_qp_derivatives_match_jaxopt",
    "datasets/test_cutest.py::test_sketched_newton_on_cutest[TRIGON1NE]",
    "datasets/test_cutest.py::test_sketched_newton_on_cutest[HS78]",
    "datasets/test_cutest.py::test_sketched_newton_on_cutest[HS40]",
    "datasets/test_cutest.py::test_sketched_newton_on_cutest[BT10]",
    "datasets/test_cutest.py::test_sketched_newton_bfgs[BT10]",
    "datasets/test_cutest.py::test_sketched_newton_bfgs[HS40]",
    # bad input: the first-order family is covered by F2SA; prox Jacobians by the
    # weighted group L1
    "test_bad_input.py::test_bad_input[PenaltyMethod-",
    "test_prox.py::test_jacobian_equals_finite_differences[group_l1]",
    # the longest docs pages (the getting-started page and the tutorials of each
    # family stay in the default run)
    "test_docs.py::test_the_code_of_each_page_runs[reliability.md]",
    "test_docs.py::test_the_code_of_each_page_runs[tutorials/first-order.md]",
    # further instances of derivative kinds the default run keeps one case of
    "implicit/test_iterate.py::test_unrolled_converges_to_implicit_as_T_grows",
    "implicit/test_iterate.py::test_adjoints_vmap_over_hyperparameters_and_pytree_states[unrolled]",
    "implicit/test_iterate.py::test_adjoints_vmap_over_hyperparameters_and_pytree_states[truncated]",
    "implicit/test_properties.py::test_implicit_jacobian_matches_dense_solve",
    "solvers/test_polyhedral.py::test_jacobian_matches_finite_differences[0]",
    "solvers/test_polyhedral.py::test_second_order_on_a_random_polyhedron",
    "solvers/test_sketch_properties.py::test_solution_matches_dense_solve",
    "solvers/test_sketch.py::test_n_500_kkt_with_blocks",
    "bilevel/test_hypergradient.py::test_outputs_have_their_exact_derivatives[lbfgs]",
)


def pytest_collection_modifyitems(config, items):
    import pytest

    for item in items:
        if any(item.nodeid.removeprefix("tests/").startswith(s) for s in _SLOW):
            item.add_marker(pytest.mark.slow)
