select e.first_name, d.department_name, m.first_name as manager
from employees e
left join departments d on e.department_id = d.department_id
left outer join employees m on m.employee_id = e.manager_id
cross join settings
where d.budget between 1000 and 50000
